"""The confident-exit cascade: exit rule, batched inference and cost model.

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
(`keras_egt/export/kit/egt_cascade.c`: `max(q) >= threshold_int8`).

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

import numpy as np
from keras import ops

from keras_egt import costs, metrics
from keras_egt.checks import check_finite_outputs, check_inputs
from keras_egt.exit_rule import (  # noqa: F401  (the exit rule, re-exported)
    CRITERIA,
    NEVER_EXIT,
    average_cost,
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
    "Cascade",
    "average_cost",
    "confidence",
    "decide",
    "exit_shares",
    "first_exit",
    "oracle_exits",
    "resolve_criterion",
    "resolve_thresholds",
    "should_exit",
]

DEFAULT_BATCH_SIZE = 64


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
            x: float inputs `(n, H, W, C)`, scaled as in training; integer images
                are refused (`keras_egt.checks.check_image_dtype`).
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
            p = check_finite_outputs(metrics.softmax(head(h)), f"exit {k + 1}'s probabilities")
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
        return average_cost(exits, costs.exit_macs(self.model))

    def speedup(self, exits):
        """MAC speedup of the cascade vs the model without early exit."""
        return costs.final_only_macs(self.model) / self.average_macs(exits)

    def __repr__(self):
        t = ", ".join(f"{v:g}" for v in self.thresholds[:-1])
        return f"Cascade(thresholds=[{t}], criterion={self.criterion!r})"
