"""The confident-exit cascade: exit rule, batched inference, cost model and calibration.

**Exit rule** (`keras_egt.exit_rule`, re-exported here). A sample leaves at early exit k as soon as that exit is
confident enough: `confidence(p_k) >= threshold_k`, where

* `"max_probability"` (the paper's): `confidence = max_c p_c`;
* `"entropy"`: `confidence = 1 - H(p) / log(C)`, with `H(p) = -sum_c p_c log p_c`,
  i.e. one minus the normalised entropy: 1 for a one-hot prediction, 0 for the
  uniform one.

Both confidences lie in [0, 1] and a *higher* threshold is *stricter* for both: a
threshold of 0 sends every sample out at exit 1, a threshold above 1 sends every
sample on to the final exit K (`NEVER_EXIT`). The final exit takes whatever reaches
it, so its threshold is ignored. This is the rule the int8 runtimes implement
(`tflite/egt_cascade.c`: `max(q) >= threshold_int8`).

**Exit indices** are 0-based throughout the Python API: `exits[i] == 0` means sample
i left at the paper's "Exit 1", `K - 1` at the final exit ("Exit 5" for the paper's
five-block CNN).

**Cost model** (`keras_egt.costs`). A sample leaving at exit k costs
`exit_macs(model)[k]`: blocks 1..k plus heads 1..k (every head on the way was run and
found not confident). The cascade's cost is the mean of that over samples; its
speedup is `final_only_macs(model) / average`, against the model without early exit
(every stage and the final head only, no early heads). The **oracle bound** lets
every sample leave at its earliest *correct* exit; a sample no exit gets right leaves
at the final exit (it has to run to the end to be classified at all). No thresholds can beat
the oracle's cost at the oracle's accuracy, so `average / oracle` says how much
room the thresholds leave.
"""

import math

import numpy as np
from keras import ops

from keras_egt import costs
from keras_egt import metrics
from keras_egt.checks import check_inputs, check_labels
from keras_egt.exit_rule import (  # noqa: F401  (the exit rule, re-exported)
    CRITERIA,
    NEVER_EXIT,
    _check_criterion,
    confidence,
    decide,
    exit_shares,
    first_exit,
    oracle_exits,
    resolve_criterion,
    resolve_thresholds,
    should_exit,
)

__all__ = [
    "CRITERIA",
    "NEVER_EXIT",
    "CalibratedThresholds",
    "Cascade",
    "calibrate_thresholds",
    "confidence",
    "decide",
    "exit_shares",
    "first_exit",
    "oracle_exits",
    "resolve_criterion",
    "resolve_thresholds",
    "should_exit",
    "threshold_curve",
]

DEFAULT_BATCH_SIZE = 64
_CHUNK_ELEMENTS = 1 << 23


def _average(exits, exit_macs):
    return float(np.mean(np.asarray(exit_macs, np.float64)[exits])) if len(exits) else 0.0


def _summary(exits, correct_at_exit, exit_macs, final_macs):
    average = _average(exits, exit_macs)
    return {
        "accuracy": float(np.mean(correct_at_exit)) if len(exits) else 0.0,
        "average_macs": average,
        "speedup": final_macs / average if average else float("nan"),
        "exit_shares": exit_shares(exits, len(exit_macs)),
    }


class Cascade:
    """An early-exit model run as a confident-exit cascade.

    Every sample runs stage 1 and head 1; if head 1 is confident enough
    (`should_exit`) it leaves with head 1's label, otherwise it goes on to stage 2,
    and so on; the final exit takes whatever reaches it. In a batch, the samples that
    left are dropped: the deeper stages run only on the rows still in flight, so a batch
    costs what its samples would cost one by one, and batch size never changes the
    answers.

    Args:
        model: an `EarlyExitModel` (e.g. an `EarlyExitCNN`).
        threshold: one number for every exit (the paper: 0.9), or one per exit (K,
            the last ignored; or K - 1), e.g. the result of `calibrate_thresholds`.
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
        self.threshold = threshold
        self.criterion = resolve_criterion(threshold, criterion)
        # Checks the threshold now; without a model yet, as far as it can.
        count = model.num_exits if model is not None else max(2, np.size(threshold) + 1)
        resolve_thresholds(threshold, count)

    @property
    def thresholds(self):
        """The K thresholds for the model's exits (`resolve_thresholds`)."""
        return resolve_thresholds(self.threshold, self.model.num_exits)

    def predict(self, x, batch_size=DEFAULT_BATCH_SIZE):
        """Classifies `x`, running every sample only as deep as it needs.

        Args:
            x: inputs `(n, H, W, C)`.
            batch_size: samples entering the cascade together. At 1, each sample runs
                as one compiled call (`keras_egt.compiled_cascade.CompiledCascade`).

        Returns:
            `(labels, exits)`: int64 numpy arrays `(n,)`; `exits[i]` is the 0-based
            index of the exit sample i took (0 = exit 1, ..., K - 1 = the final exit).

        Example:
        >>> labels, exits = Cascade(model, 0.9).predict(x_test, batch_size=1)
        """
        x = np.asarray(x)
        check_inputs(x, self.model.image_shape, "x")
        if batch_size == 1:
            # Batch 1 is the edge case: the whole path as one compiled call per sample.
            from keras_egt.compiled_cascade import CompiledCascade

            return CompiledCascade(self.model, self.thresholds, self.criterion).predict(x)
        labels = np.zeros(len(x), np.int64)
        exits = np.zeros(len(x), np.int64)
        for part in metrics.batches(len(x), batch_size):
            rows = np.arange(part.start, part.stop)
            self._run(x[part], rows, labels, exits)
        return labels, exits

    def _run(self, x, rows, labels, exits):
        h = ops.convert_to_tensor(x, dtype=self.model.compute_dtype)
        last = self.model.num_exits - 1
        for k, (stage, head) in enumerate(zip(self.model.stages, self.model.heads)):
            h = stage(h, training=False)
            p = metrics.softmax(head(h))
            if k == last:
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
        probabilities `(K, n, C)`; returns `(labels, exits)`."""
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


class CalibratedThresholds(list):
    """Five thresholds (a plain list, usable as `Cascade(model, threshold=...)`) and how
    they were found.

    Attributes:
        criterion: the exit criterion they are for.
        accuracy: cascade accuracy with them on the calibration data (fraction).
        average_macs: the cascade's mean MACs per sample there.
        speedup: `final_only_macs / average_macs`.
        exit_shares: fraction of samples leaving at each exit.
        final_accuracy: accuracy of exit 5 alone there (the reference).
        final_only_macs: MACs of the model without early exit.
        oracle: dict (`accuracy`, `average_macs`, `speedup`, `exit_shares`) of the
            oracle bound.
        curve: list of dicts, one per shared threshold of `grid` (`threshold`,
            `accuracy`, `average_macs`, `speedup`, `exit_shares`): accuracy against cost,
            for `keras_egt.plots.speedup_curve`.
        objective: `"min_macs"` (within `max_accuracy_drop`) or `"max_accuracy"`
            (within `mac_budget`).
    """

    def to_dict(self):
        """The thresholds and every attribute, as JSON-ready values."""
        out = {"thresholds": [float(v) for v in self]}
        for name in ("criterion", "objective", "max_accuracy_drop", "mac_budget", "accuracy",
                     "average_macs", "speedup", "exit_shares", "final_accuracy",
                     "final_only_macs", "oracle", "curve"):
            out[name] = getattr(self, name, None)
        return out


def threshold_curve(probabilities, y, exit_macs, final_macs, grid=None,
                    criterion="max_probability"):
    """Accuracy and cost of the cascade for one shared threshold at each point of `grid`.

    Args:
        probabilities: array `(5, n, C)` of every exit's probabilities.
        y: labels `(n,)`.
        exit_macs: the 5 costs of leaving at each exit (`costs.exit_macs`).
        final_macs: cost without early exit (`costs.final_only_macs`).
        grid: thresholds (default 0, 0.01, ..., 1 and `NEVER_EXIT`).
        criterion: the exit criterion.

    Returns:
        A list of dicts `threshold, accuracy, average_macs, speedup, exit_shares`.

    Example:
    >>> curve = threshold_curve(p, y_val, costs.exit_macs(model), costs.final_only_macs(model))
    """
    probabilities = np.asarray(probabilities)
    y = np.asarray(y).reshape(-1)
    if grid is None:
        grid = list(np.round(np.linspace(0.0, 1.0, 101), 2)) + [NEVER_EXIT]
    conf = confidence(probabilities[:-1], criterion)
    correct = np.argmax(probabilities, -1) == y[None]
    n = np.arange(len(y))
    out = []
    for t in grid:
        exits = first_exit(conf >= float(t))
        point = {"threshold": float(t)}
        point.update(_summary(exits, correct[exits, n], exit_macs, final_macs))
        out.append(point)
    return out


def _candidates(conf):
    """Every distinct decision of one exit: 0, midpoints between distinct confidences,
    and `NEVER_EXIT`."""
    values = np.unique(conf)
    mids = (values[1:] + values[:-1]) / 2.0
    return np.concatenate([[0.0], mids, [NEVER_EXIT]])


def calibrate_thresholds(model, x_val, y_val, max_accuracy_drop=0.005, mac_budget=None,
                         criterion="max_probability", batch_size=DEFAULT_BATCH_SIZE,
                         max_rounds=10, probabilities=None):
    """Per-exit thresholds that make the cascade cheapest within an accuracy drop.

    Objective, on the calibration data `(x_val, y_val)`:

    * default: minimise the cascade's average MACs subject to
      `accuracy >= accuracy(exit 5 alone) - max_accuracy_drop`;
    * with `mac_budget`: maximise accuracy subject to `average MACs <= mac_budget`
      (`max_accuracy_drop` is then ignored).

    The five exits' probabilities are computed once; the search then runs in numpy
    on them. Each threshold only matters through which samples it lets out, so the
    candidates of exit k are 0, the midpoints between its distinct confidences and
    `NEVER_EXIT` (an exhaustive set). The search starts from the best shared
    threshold and from "never exit early", then does coordinate descent: for each
    early exit in turn it tries every candidate with the other thresholds fixed and
    keeps the best feasible one (ties: fewer MACs, then higher accuracy), until a
    round changes nothing. Thresholds tuned this finely fit the calibration set:
    calibrate on held-out validation data, not on the test set.

    Args:
        model: an `EarlyExitModel` (e.g. an `EarlyExitCNN`).
        x_val: calibration inputs `(n, H, W, C)`.
        y_val: their labels.
        max_accuracy_drop: allowed accuracy drop below exit 5 alone, as a fraction
            (0.005 = half a percentage point).
        mac_budget: average MACs per sample allowed (e.g.
            `0.5 * costs.final_only_macs(model)`), or None.
        criterion: `"max_probability"` or `"entropy"`.
        batch_size: batch size of the single inference pass.
        max_rounds: rounds of coordinate descent at most.
        probabilities: the five exits' probabilities `(5, n, C)` if already computed
            (then `x_val` is not run).

    Returns:
        A `CalibratedThresholds`: a list of 5 thresholds (the last is `NEVER_EXIT`,
        ignored by the cascade) carrying the achieved accuracy, MACs, speedup, the
        oracle bound and the shared-threshold `curve`.

    Example:
    >>> thresholds = calibrate_thresholds(model, x_val, y_val, max_accuracy_drop=0.005)
    >>> cascade = Cascade(model, threshold=thresholds)
    >>> thresholds.speedup, thresholds.curve[:2]
    """
    _check_criterion(criterion)
    if probabilities is None:
        probabilities = metrics.exit_probabilities(model, x_val, batch_size)
    probabilities = np.asarray(probabilities, np.float64)
    y = np.asarray(y_val).reshape(-1)
    check_labels(y, probabilities.shape[-1], "y_val", probabilities.shape[1])
    if len(y) == 0:
        raise ValueError("calibrate_thresholds needs at least one validation sample.")
    exit_macs = np.asarray(costs.exit_macs(model), np.float64)
    final_macs = float(costs.final_only_macs(model))
    n = len(y)
    rows = np.arange(n)
    conf = confidence(probabilities[:-1], criterion)
    correct = np.argmax(probabilities, -1) == y[None]
    final_accuracy = float(correct[-1].mean())

    if mac_budget is None:
        drop = float(max_accuracy_drop)
        if not drop >= 0:
            raise ValueError(f"max_accuracy_drop must be a fraction >= 0, got {max_accuracy_drop}.")
        # Counted in samples, so float rounding cannot flip feasibility.
        min_correct = math.ceil(int(correct[-1].sum()) - drop * n - 1e-9)
        objective = "min_macs"
    else:
        budget = float(mac_budget)
        if not budget >= exit_macs[0]:
            raise ValueError(
                f"mac_budget {mac_budget} is below the cost of exit 1 alone ({int(exit_macs[0])} "
                "MACs), the cheapest any cascade can be."
            )
        objective = "max_accuracy"

    def evaluate(threshold_matrix):
        """Scores candidate threshold vectors (m, 4): (num_correct, total MACs)."""
        num_correct, macs = [], []
        step = max(1, _CHUNK_ELEMENTS // (len(probabilities) * n))  # bounds the (m, K, n) masks
        for start in range(0, len(threshold_matrix), step):
            part = threshold_matrix[start : start + step]
            exits = first_exit(np.moveaxis(conf[None] >= part[:, :, None], 1, 0))  # (m, n)
            num_correct.append(correct[exits, rows[None]].sum(axis=1))
            macs.append(exit_macs[exits].sum(axis=1))
        return np.concatenate(num_correct), np.concatenate(macs)

    def best(threshold_matrix):
        num_correct, macs = evaluate(threshold_matrix)
        if objective == "min_macs":
            feasible = num_correct >= min_correct
            key = np.lexsort((-num_correct, macs))  # fewest MACs, then most correct
        else:
            feasible = macs <= budget * n * (1 + 1e-12)
            key = np.lexsort((macs, -num_correct))  # most correct, then fewest MACs
        key = [i for i in key if feasible[i]]
        if not key:
            return None
        return threshold_matrix[key[0]], (num_correct[key[0]], macs[key[0]])

    def better(a, b):
        if b is None:
            return True
        if objective == "min_macs":
            return (a[1], -a[0]) < (b[1], -b[0])
        return (-a[0], a[1]) < (-b[0], b[1])

    shared = np.unique(np.concatenate([_candidates(conf.ravel()), [NEVER_EXIT]]))
    starts = [np.full(len(conf), NEVER_EXIT)]
    found = best(np.repeat(shared[:, None], len(conf), axis=1))
    if found is not None:
        starts.append(found[0])
    if objective == "max_accuracy":
        # Budgets below exit 5's cost are infeasible for "never exit": start from the
        # cheapest cascade as well.
        starts.append(np.zeros(len(conf)))
    candidates = [_candidates(c) for c in conf]

    result, score = None, None
    for start in starts:
        current = best(start[None])
        if current is None:
            continue
        thresholds, current_score = current[0].copy(), current[1]
        for _ in range(int(max_rounds)):
            changed = False
            for k in range(len(conf)):
                trial = np.repeat(thresholds[None], len(candidates[k]), axis=0)
                trial[:, k] = candidates[k]
                found = best(trial)
                if found is not None and better(found[1], current_score):
                    thresholds, current_score, changed = found[0].copy(), found[1], True
            if not changed:
                break
        if better(current_score, score):
            result, score = thresholds, current_score
    if result is None:  # unreachable: "never exit early" meets any drop >= 0
        raise ValueError("No thresholds meet the constraint on this data.")

    thresholds = CalibratedThresholds([float(v) for v in result] + [NEVER_EXIT])
    exits = first_exit(conf >= result[:, None])
    summary = _summary(exits, correct[exits, rows], exit_macs, final_macs)
    oracle = oracle_exits(correct)
    thresholds.criterion = criterion
    thresholds.objective = objective
    thresholds.max_accuracy_drop = None if mac_budget is not None else float(max_accuracy_drop)
    thresholds.mac_budget = None if mac_budget is None else float(mac_budget)
    thresholds.accuracy = summary["accuracy"]
    thresholds.average_macs = summary["average_macs"]
    thresholds.speedup = summary["speedup"]
    thresholds.exit_shares = summary["exit_shares"]
    thresholds.final_accuracy = final_accuracy
    thresholds.final_only_macs = final_macs
    thresholds.oracle = _summary(oracle, correct[oracle, rows], exit_macs, final_macs)
    thresholds.curve = threshold_curve(probabilities, y, exit_macs, final_macs,
                                       criterion=criterion)
    return thresholds
