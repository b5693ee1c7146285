"""The confident-exit cascade: exit rule, batched inference and cost model.

Choosing the thresholds with a guarantee on new data is `keras_egt.calibration`.

**Exit rule** (`should_exit`). A sample leaves at early exit k as soon as that exit is
confident enough: `confidence(p_k) >= threshold_k`, where

* `"max_probability"` (the paper's): `confidence = max_c p_c`;
* `"entropy"`: `confidence = 1 - H(p) / log(C)`, with `H(p) = -sum_c p_c log p_c`,
  i.e. one minus the normalised entropy: 1 for a one-hot prediction, 0 for the
  uniform one.

Both confidences lie in [0, 1] and a *higher* threshold is *stricter* for both: a
threshold of 0 sends every sample out at exit 1, a threshold above 1 sends every
sample on to exit 5 (`NEVER_EXIT`). Exit 5 always takes whatever reaches it, so the
fifth threshold is ignored. This is the rule the int8 runtimes implement
(`tflite/egt_cascade.c`: `max(q) >= threshold_int8`).

**Exit indices** are 0-based throughout the Python API: `exits[i] == 0` means sample
i left at the paper's "Exit 1", `4` at "Exit 5".

**Cost model** (`keras_egt.costs`). A sample leaving at exit k costs
`exit_macs(model)[k]`: blocks 1..k plus heads 1..k (every head on the way was run and
found not confident). The cascade's cost is the mean of that over samples; its
speedup is `final_only_macs(model) / average`, against the model without early exit
(all five blocks and the final head only, no early heads). The **oracle bound** lets
every sample leave at its earliest *correct* exit; a sample no exit gets right leaves
at exit 5 (it has to run to the end to be classified at all). No thresholds can beat
the oracle's cost at the oracle's accuracy, so `average / oracle` says how much
room the thresholds leave.
"""

import math

import numpy as np
from keras import ops

from keras_egt import costs
from keras_egt import metrics
from keras_egt.checks import check_inputs
from keras_egt.model import NUM_EXITS

__all__ = [
    "CRITERIA",
    "NEVER_EXIT",
    "Cascade",
    "confidence",
    "decide",
    "oracle_exits",
    "resolve_criterion",
    "should_exit",
]

CRITERIA = ("max_probability", "entropy")
# Any threshold above 1 never fires (confidences lie in [0, 1]); 2.0 stays a plain
# JSON number, unlike inf.
NEVER_EXIT = 2.0
DEFAULT_BATCH_SIZE = 64


def _check_criterion(criterion):
    if criterion not in CRITERIA:
        raise ValueError(f"Unknown exit criterion {criterion!r}; use one of {CRITERIA}.")
    return criterion


def _check_threshold(value, where="threshold"):
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be a number, got {value!r}.") from None
    if math.isnan(value):
        raise ValueError(f"{where} must be a number, got NaN.")
    return value


def confidence(probabilities, criterion="max_probability"):
    """The confidence of each prediction, in [0, 1] (see the module docstring).

    Args:
        probabilities: array `(..., num_classes)` of softmax outputs.
        criterion: `"max_probability"` or `"entropy"`.

    Returns:
        A float64 array `probabilities.shape[:-1]`.

    Example:
    >>> confidence(np.array([[0.5, 0.5], [1.0, 0.0]]), "entropy")   # [0., 1.]
    """
    _check_criterion(criterion)
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim < 1 or p.shape[-1] < 2:
        raise ValueError(
            f"probabilities must have a class axis of at least 2 classes last, got shape {p.shape}."
        )
    if criterion == "max_probability":
        return p.max(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    entropy = -plogp.sum(axis=-1)
    return np.clip(1.0 - entropy / math.log(p.shape[-1]), 0.0, 1.0)


def should_exit(probabilities, threshold, criterion="max_probability"):
    """The exit rule: whether each sample is confident enough to leave at this exit.

    `confidence(probabilities, criterion) >= threshold`. Threshold 0 exits every
    sample; any threshold above 1 exits none.

    Args:
        probabilities: numpy array `(num_classes,)` or `(n, num_classes)` of softmax
            outputs of one exit.
        threshold: a number; higher is stricter for both criteria.
        criterion: `"max_probability"` (the paper's) or `"entropy"` (exit when
            `1 - H(p)/log(C) >= threshold`).

    Returns:
        A numpy bool array `probabilities.shape[:-1]` (a 0-d array for one sample).

    Example:
    >>> should_exit(np.array([[0.95, 0.05], [0.6, 0.4]]), 0.9)
    array([ True, False])
    """
    threshold = _check_threshold(threshold)
    return np.asarray(confidence(probabilities, criterion) >= threshold)


def resolve_criterion(threshold, criterion=None):
    """The exit criterion to use with `threshold`.

    Thresholds from `calibrate_thresholds` remember their criterion: it is used when
    `criterion` is None, and a different explicit one is an error (the thresholds of
    one criterion mean nothing for the other). Otherwise None means
    `"max_probability"`.
    """
    calibrated = getattr(threshold, "criterion", None)
    if criterion is None:
        return calibrated or "max_probability"
    _check_criterion(criterion)
    if calibrated is not None and calibrated != criterion:
        raise ValueError(
            f"These thresholds were calibrated for criterion {calibrated!r}, not "
            f"{criterion!r}; calibrate again with criterion={criterion!r}."
        )
    return criterion


def _resolve_thresholds(threshold):
    if np.ndim(threshold) == 0:
        t = _check_threshold(threshold)
        return (t,) * NUM_EXITS
    values = list(threshold)
    if len(values) not in (NUM_EXITS - 1, NUM_EXITS):
        raise ValueError(
            f"threshold must be one number or one per exit ({NUM_EXITS}; the last is "
            f"ignored, exit {NUM_EXITS} takes every sample that reaches it), got {len(values)}."
        )
    values = [_check_threshold(v, f"threshold[{k}]") for k, v in enumerate(values)]
    if len(values) == NUM_EXITS - 1:
        values.append(NEVER_EXIT)
    return tuple(values)


def decide(probabilities, thresholds, criterion="max_probability"):
    """The cascade's decisions from all five exits' probabilities, without running it.

    Sample i leaves at the first early exit k whose probabilities pass
    `should_exit(p_k, thresholds[k], criterion)`, else at exit 5. Identical to
    `Cascade.predict` on the same probabilities (the cascade just does not compute
    the exits it never reaches).

    Args:
        probabilities: array `(5, n, num_classes)` (`metrics.exit_probabilities`).
        thresholds: one number or one per exit.
        criterion: `"max_probability"` or `"entropy"`.

    Returns:
        `(labels, exits)`: int arrays `(n,)`, exits 0-based.

    Example:
    >>> labels, exits = decide(metrics.exit_probabilities(model, x), 0.9)
    """
    probabilities = np.asarray(probabilities)
    thresholds = _resolve_thresholds(thresholds)
    conf = confidence(probabilities, criterion)
    exits = _first_exit(conf[: NUM_EXITS - 1] >= np.asarray(thresholds[:-1])[:, None])
    labels = np.argmax(probabilities, axis=-1)[exits, np.arange(probabilities.shape[1])]
    return labels.astype(np.int64), exits


def _first_exit(fires):
    """Index of the first True along axis 0 of `fires` (4, ...), or 4 where none is."""
    fires = np.concatenate([fires, np.ones((1,) + fires.shape[1:], bool)], axis=0)
    return np.argmax(fires, axis=0).astype(np.int64)


def oracle_exits(correct):
    """The oracle's exit of every sample: its earliest correct exit, else the last.

    Args:
        correct: bool array `(5, n)`, whether exit k classifies sample i correctly.

    Returns:
        An int array `(n,)` of 0-based exits.

    Example:
    >>> oracle_exits(np.array([[0, 1], [1, 1], [0, 0], [0, 0], [1, 0]], bool))
    array([1, 0])
    """
    correct = np.asarray(correct, bool)
    return _first_exit(correct[: NUM_EXITS - 1])


def _average(exits, exit_macs):
    return float(np.mean(np.asarray(exit_macs, np.float64)[exits])) if len(exits) else 0.0


class Cascade:
    """An early-exit model run as a confident-exit cascade.

    Every sample runs block 1 and head 1; if head 1 is confident enough
    (`should_exit`) it leaves with head 1's label, otherwise it goes on to block 2,
    and so on; exit 5 takes whatever reaches it. In a batch, the samples that left
    are dropped: the deeper blocks run only on the rows still in flight, so a batch
    costs what its samples would cost one by one, and batch size never changes the
    answers.

    Args:
        model: an `EarlyExitCNN`.
        threshold: one number for every exit (the paper: 0.9), or one per exit (5,
            the last ignored; or 4), e.g. the result of `calibrate_thresholds`.
        criterion: `"max_probability"` (the paper's) or `"entropy"`; see
            `should_exit`. None: the criterion `threshold` was calibrated for, if it
            comes from `calibrate_thresholds`, else `"max_probability"`.

    Example:
    >>> cascade = Cascade(model, threshold=0.9)
    >>> labels, exits = cascade.predict(x)   # exits: 0-based, 0 = "Exit 1"
    >>> cascade.average_macs(exits), cascade.speedup(exits)
    """

    def __init__(self, model, threshold=0.9, criterion=None):
        self.model = model
        self.thresholds = _resolve_thresholds(threshold)
        self.criterion = resolve_criterion(threshold, criterion)

    def predict(self, x, batch_size=DEFAULT_BATCH_SIZE):
        """Classifies `x`, running every sample only as deep as it needs.

        Args:
            x: inputs `(n, H, W, C)`.
            batch_size: samples entering the cascade together.

        Returns:
            `(labels, exits)`: int64 numpy arrays `(n,)`; `exits[i]` is the 0-based
            index of the exit sample i took (0 = exit 1, ..., 4 = exit 5).

        Example:
        >>> labels, exits = Cascade(model, 0.9).predict(x_test, batch_size=1)
        """
        x = np.asarray(x)
        check_inputs(x, self.model.image_shape, "x")
        labels = np.zeros(len(x), np.int64)
        exits = np.zeros(len(x), np.int64)
        for part in metrics.batches(len(x), batch_size):
            rows = np.arange(part.start, part.stop)
            self._run(x[part], rows, labels, exits)
        return labels, exits

    def _run(self, x, rows, labels, exits):
        h = ops.convert_to_tensor(x, dtype=self.model.compute_dtype)
        for k, (block, head) in enumerate(zip(self.model.blocks, self.model.heads)):
            h = block(h, training=False)
            p = metrics.softmax(head(h))
            if k == NUM_EXITS - 1:
                done = np.ones(len(rows), bool)
            else:
                done = should_exit(p, self.thresholds[k], self.criterion)
            labels[rows[done]] = np.argmax(p[done], axis=-1)
            exits[rows[done]] = k
            if done.all():
                return
            keep = np.flatnonzero(~done)
            if len(keep) < len(rows):
                # Only the samples still in flight go deeper.
                h = ops.take(h, ops.convert_to_tensor(keep.astype("int32")), axis=0)
                rows = rows[keep]

    def decide(self, probabilities):
        """`decide(probabilities, self.thresholds, self.criterion)`: decisions from cached
        five-exit probabilities `(5, n, C)`; returns `(labels, exits)`."""
        return decide(probabilities, self.thresholds, self.criterion)

    def average_macs(self, exits):
        """Mean MACs per sample of samples leaving at `exits` (0-based)."""
        return _average(np.asarray(exits, np.int64), costs.exit_macs(self.model))

    def speedup(self, exits):
        """MAC speedup of the cascade vs the model without early exit."""
        return costs.final_only_macs(self.model) / self.average_macs(exits)

    def __repr__(self):
        t = ", ".join(f"{v:g}" for v in self.thresholds[:-1])
        return f"Cascade(thresholds=[{t}], criterion={self.criterion!r})"


_MOVED = ("CalibratedThresholds", "calibrate_thresholds", "threshold_curve")


def __getattr__(name):
    # Calibration moved to keras_egt.calibration; the old names keep working. Lazy,
    # because keras_egt.calibration imports this module.
    if name in _MOVED:
        from keras_egt import calibration

        return getattr(calibration, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
