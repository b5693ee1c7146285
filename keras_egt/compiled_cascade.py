"""The batch-1 cascade as one compiled call: every stage, exit test and branch in one graph.

Run segment by segment from Python, a batch-1 cascade pays one dispatch (and one
device-to-host read for the exit test) per stage it reaches: ~1 ms each on
TensorFlow, more than a small stage computes. `CompiledCascade` instead traces the
whole early-exit path into one function: stage 1, head 1, the exit test, and a
conditional (`keras.ops.cond`, i.e. `tf.cond` / `jax.lax.cond`) whose untaken branch
never runs; the branch that goes on holds stage 2, head 2, the next test and the next
conditional, and so on. A sample that leaves at exit 1 costs stage 1, head 1 and one
dispatch. On PyTorch the same function runs eagerly under `torch.no_grad()` and the
conditional is a Python `if`.

The exit test is the cascade's rule (`keras_egt.exit_rule.should_exit`):
`confidence(softmax(logits_k)) >= threshold_k` with the same two criteria and the
thresholds of `resolve_thresholds`, written in `keras.ops` so it runs inside the graph.
It computes in float32 where `should_exit` uses float64, so a confidence within
float32 rounding (~1e-7) of a threshold may be decided differently; everything else
is decided identically. Thresholds known at trace time to always fire (<= 0) or
never fire (> 1) are branched on in Python: a never-firing exit's head is not even
run, which changes no answer.
"""

import math

import numpy as np
from keras import ops

from keras_egt import metrics
from keras_egt.exit_rule import resolve_criterion, resolve_thresholds

__all__ = ["CompiledCascade", "graph_confidence"]


def graph_confidence(logits, criterion="max_probability"):
    """`exit_rule.confidence` of `softmax(logits)`, in `keras.ops` (traceable).

    Args:
        logits: tensor `(..., num_classes)`.
        criterion: `"max_probability"` or `"entropy"`.

    Returns:
        A float32 tensor `logits.shape[:-1]` in [0, 1].

    Example:
    >>> graph_confidence(ops.convert_to_tensor([[2.0, 0.0]]))   # ~[0.881]
    """
    logits = ops.cast(logits, "float32")
    p = ops.softmax(logits, axis=-1)
    if criterion == "max_probability":
        return ops.max(p, axis=-1)
    # log p from log-softmax: finite where p underflows to 0 (and p * log p -> 0 there).
    log_p = logits - ops.logsumexp(logits, axis=-1, keepdims=True)
    entropy = -ops.sum(p * log_p, axis=-1)
    return ops.clip(1.0 - entropy / math.log(int(logits.shape[-1])), 0.0, 1.0)


class CompiledCascade:
    """A batch-1 confident-exit cascade traced into one compiled function.

    Args:
        model: an `EarlyExitModel` (anything with `stages`, `heads`, `num_exits`,
            `compute_dtype`).
        threshold: as `Cascade` (one number, K - 1 or K numbers).
        criterion: as `Cascade` (None: the calibrated one, else max-probability).

    Calling it on one sample `(1, H, W, C)` returns `(label, exit)` as Python ints
    (exit 0-based). The weights are read when the function is first traced
    (`jax.jit`): build a new `CompiledCascade` after changing them.

    Example:
    >>> run = CompiledCascade(model, threshold=0.9)
    >>> label, exit = run(x_test[:1])
    """

    def __init__(self, model, threshold=0.9, criterion=None):
        self.model = model
        self.criterion = resolve_criterion(threshold, criterion)
        self.thresholds = resolve_thresholds(threshold, model.num_exits)
        self._fn = metrics.compile_inference(self._path)

    def _from(self, k, h):
        """Stages k.. of the cascade on features h: a tensor [label, exit] (int32)."""
        model, last = self.model, self.model.num_exits - 1
        h = model.stages[k](h, training=False)
        threshold = self.thresholds[k]
        if k < last and threshold > 1.0:
            return self._from(k + 1, h)  # never fires: skip head k
        logits = model.heads[k](h)
        leave = ops.stack([ops.cast(ops.argmax(logits[0]), "int32"),
                           ops.convert_to_tensor(k, "int32")])
        if k == last or threshold <= 0.0:
            return leave
        fires = graph_confidence(logits, self.criterion)[0] >= threshold
        return ops.cond(fires, lambda: leave, lambda: self._from(k + 1, h))

    def _path(self, x):
        return self._from(0, x)

    def __call__(self, x):
        """Classifies one sample `(1, H, W, C)`; returns `(label, exit)` ints."""
        out = ops.convert_to_numpy(self._fn(ops.convert_to_tensor(x, self.model.compute_dtype)))
        return int(out[0]), int(out[1])

    def predict(self, x):
        """Runs every sample of `x` one by one; returns int64 `(labels, exits)`."""
        labels = np.zeros(len(x), np.int64)
        exits = np.zeros(len(x), np.int64)
        for i in range(len(x)):
            labels[i], exits[i] = self(x[i : i + 1])
        return labels, exits
