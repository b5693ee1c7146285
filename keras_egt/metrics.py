"""Evaluation metrics of an early-exit model on a data set: the paper's Table I figures.

* **Attention consistency** of early exit k (k = 1..K-1): the mean over samples of
  `cos(vec(resize(A_k)), vec(A_K))`, where `A_k` is exit k's spatial attention map
  and `resize` the antialiased bilinear resize to the final map `A_K`'s size
  (`keras_egt.losses.attention_consistency`). "Avg" is the mean over early exits.
* **Chance floor**: the same metric with the pairing shuffled between samples,
  `cos(resize(A_k[i]), A_5[π(i)])` for a seeded random derangement π (π(i) ≠ i).
  It is what consistency would be if the early exit looked at the right *kind*
  of place but not at this sample's: EGT's gain is the distance above it.
* **Chance-corrected consistency**: `(c - floor) / (1 - floor)` (`chance_corrected`).
* **Accuracy of every exit** (top-1).

Everything runs in batches, so large sets fit in memory: per sample only the K
exits' probabilities and the maps resized to the final map's size are kept.
"""

import keras
import numpy as np
from keras import ops

from keras_egt import losses
from keras_egt.checks import check_inputs, check_labels

__all__ = [
    "ExitOutputs",
    "attention_consistency",
    "chance_consistency",
    "chance_corrected",
    "compile_inference",
    "derangement",
    "exit_accuracies",
    "exit_outputs",
    "exit_probabilities",
    "softmax",
]

DEFAULT_BATCH_SIZE = 64


def softmax(logits):
    """Softmax over the last axis in float64 numpy (the cascade's probabilities).

    One function for every path (batched metrics, the cascade, calibration), so the
    exit decisions computed from cached probabilities are the cascade's own.

    Args:
        logits: array-like `(..., num_classes)`.

    Returns:
        A float64 array of the same shape whose last axis sums to 1.

    Example:
    >>> softmax(np.zeros((1, 4)))   # [[0.25, 0.25, 0.25, 0.25]]
    """
    z = np.asarray(ops.convert_to_numpy(logits), dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def batches(n, batch_size):
    """Yields `slice`s covering `range(n)` in steps of `batch_size`."""
    batch_size = int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}.")
    for start in range(0, n, batch_size):
        yield slice(start, min(n, start + batch_size))


class ExitOutputs:
    """What one inference pass over a data set keeps: probabilities and resized maps.

    Attributes:
        probabilities: float64 array `(K, n, num_classes)`, exit k's softmax in row k-1.
        maps: float32 array `(K, n, H_K, W_K)`: every exit's attention map resized to
            the final map's size (the final map itself in the last row), or None when not
            requested.
    """

    def __init__(self, probabilities, maps=None):
        self.probabilities = probabilities
        self.maps = maps

    @property
    def predictions(self):
        """Int array `(K, n)`: every exit's predicted class."""
        return np.argmax(self.probabilities, axis=-1)

    def correct(self, y):
        """Bool array `(K, n)`: whether exit k got sample i right."""
        return self.predictions == np.asarray(y).reshape(1, -1)


def compile_inference(fn):
    """`fn` as the backend runs it fastest at inference: a traced graph where there is one.

    `tf.function` on TensorFlow, `jax.jit` on JAX (the weights are read at trace time,
    so trace again after changing them), and on PyTorch eager execution under
    `torch.no_grad()`. Eager Keras adds ~0.1-1 ms of Python per layer call.

    Args:
        fn: a function of tensors that calls Keras layers in inference mode.

    Returns:
        A function with the same signature.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, reduce_retracing=True)
    if backend == "jax":
        import jax

        return jax.jit(fn)
    if backend == "torch":
        import torch

        def no_grad(*args):
            with torch.no_grad():
                return fn(*args)

        return no_grad
    return fn


def _run_exits(model, x, with_maps):
    """Runs the model stage by stage on one batch: logits (and maps) of every exit."""
    h = ops.convert_to_tensor(x, dtype=model.compute_dtype)
    logits, maps = [], []
    for stage, head in zip(model.stages, model.heads):
        h = stage(h, training=False)
        if with_maps:
            out, attention = head(h, return_attention=True)
            maps.append(attention)
        else:
            out = head(h)
        logits.append(out)
    return logits, maps


def exit_outputs(model, x, batch_size=DEFAULT_BATCH_SIZE, maps=True, progress=None):
    """Runs `model` over `x` in batches (inference mode) and keeps every exit's outputs.

    The batches run as one compiled function (`compile_inference`); the last batch is
    padded to the same size so that it is traced once.

    Args:
        model: an `EarlyExitModel`.
        x: inputs `(n, H, W, C)`.
        batch_size: samples per forward pass.
        maps: also keep the attention maps, resized to the final map's size.
        progress: a `keras.utils.Progbar` over the samples, or None.

    Returns:
        An `ExitOutputs`.

    Example:
    >>> out = exit_outputs(model, x_test)
    >>> out.probabilities.shape       # (K, n, num_classes)
    """
    x = np.asarray(x)
    check_inputs(x, model.image_shape, "x")
    n = len(x)
    batch_size = max(1, min(int(batch_size), n))

    def step(inputs):
        logits, raw = _run_exits(model, inputs, maps)
        if not maps:
            return logits, []
        size = tuple(raw[-1].shape[1:3])
        return logits, [losses.resize_map(m, size) for m in raw]

    step = compile_inference(step)
    probabilities = np.zeros((model.num_exits, n, model.num_classes), np.float64)
    resized = None
    for part in batches(n, batch_size):
        chunk = x[part]
        if len(chunk) < batch_size:
            # Inference-mode batch norm is per sample: padding rows change nothing.
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - len(chunk), 0)])
        logits, batch_maps = step(ops.convert_to_tensor(chunk, dtype=model.compute_dtype))
        count = part.stop - part.start
        for k, out in enumerate(logits):
            probabilities[k, part] = softmax(ops.convert_to_numpy(out)[:count])
        if progress is not None:
            progress.update(part.stop)
        if maps:
            if resized is None:
                resized = np.zeros((model.num_exits, n) + tuple(batch_maps[-1].shape[1:3]), np.float32)
            for k, m in enumerate(batch_maps):
                resized[k, part] = ops.convert_to_numpy(m)[:count, ..., 0]
    return ExitOutputs(probabilities, resized)


def exit_probabilities(model, x, batch_size=DEFAULT_BATCH_SIZE):
    """Every exit's softmax probabilities, float64 array `(K, n, num_classes)`.

    Example:
    >>> p = exit_probabilities(model, x_val)
    """
    return exit_outputs(model, x, batch_size, maps=False).probabilities


def exit_accuracies(outputs_or_probabilities, y):
    """Top-1 accuracy of every exit, as fractions.

    Args:
        outputs_or_probabilities: an `ExitOutputs` or an array `(K, n, C)`.
        y: integer labels `(n,)`.

    Returns:
        A list of 5 floats in [0, 1].

    Example:
    >>> exit_accuracies(exit_outputs(model, x), y)   # [0.81, 0.9, 0.95, 0.97, 0.98]
    """
    probabilities = getattr(outputs_or_probabilities, "probabilities", outputs_or_probabilities)
    probabilities = np.asarray(probabilities)
    y = np.asarray(y).reshape(-1)
    check_labels(y, probabilities.shape[-1], "y", probabilities.shape[1])
    if len(y) == 0:
        raise ValueError("exit_accuracies needs at least one sample.")
    return [float(v) for v in (np.argmax(probabilities, -1) == y[None]).mean(axis=1)]


def _maps_of(outputs_or_maps):
    maps = getattr(outputs_or_maps, "maps", outputs_or_maps)
    if maps is None:
        raise ValueError("These ExitOutputs hold no maps; run exit_outputs(..., maps=True).")
    if isinstance(maps, (list, tuple)):
        # Raw maps (batch, H_k, W_k, 1) straight from the model: resize them here.
        size = tuple(maps[-1].shape[1:3])
        maps = np.stack(
            [ops.convert_to_numpy(losses.resize_map(ops.convert_to_tensor(m), size))[..., 0]
             for m in maps]
        )
    return np.asarray(maps)


def _consistency(resized_early, final):
    # resize_map is the identity here (same size): this is the loss module's cosine.
    score = losses.attention_consistency(resized_early[..., None], final[..., None])
    return ops.convert_to_numpy(score).astype(np.float64)


def attention_consistency(outputs_or_maps, per_sample=False):
    """The paper's Table I consistency of every early exit with the final exit.

    Args:
        outputs_or_maps: an `ExitOutputs`, the list of K maps returned by
            `model.attention_maps(x)`, or an array `(K, n, H_K, W_K)` of maps already
            resized to the final map's size.
        per_sample: return the per-sample cosines instead of their means.

    Returns:
        A list of K-1 floats (mean cosine of exit k's resized map with the final
        map), or with `per_sample=True` an array `(K-1, n)`.

    Example:
    >>> c = attention_consistency(exit_outputs(model, x_test))
    >>> avg = sum(c) / len(c)                             # Table I "Avg"
    """
    maps = _maps_of(outputs_or_maps)
    scores = np.stack([_consistency(maps[k], maps[-1]) for k in range(len(maps) - 1)])
    return scores if per_sample else [float(v) for v in scores.mean(axis=1)]


def derangement(n, seed=0):
    """A seeded random permutation of `range(n)` without fixed points (n >= 2).

    Made as one random n-cycle: order the indices at random and send each to the
    next one in that order.

    Example:
    >>> p = derangement(5, seed=0)
    >>> bool(np.all(p != np.arange(5)))
    True
    """
    if n < 2:
        raise ValueError(f"A shuffled pairing needs at least 2 samples, got {n}.")
    order = np.random.default_rng(seed).permutation(n)
    perm = np.empty(n, dtype=np.int64)
    perm[order] = np.roll(order, -1)
    return perm


def chance_consistency(outputs_or_maps, seed=0, per_sample=False):
    """The chance floor of the consistency: early map of sample i vs final map of π(i).

    Args:
        outputs_or_maps: as for `attention_consistency`.
        seed: seed of the derangement π.
        per_sample: return the per-sample cosines instead of their means.

    Returns:
        A list of K-1 floats, or an array `(K-1, n)` with `per_sample=True`.

    Example:
    >>> floor = chance_consistency(exit_outputs(model, x_test))
    """
    maps = _maps_of(outputs_or_maps)
    final = maps[-1][derangement(maps.shape[1], seed)]
    scores = np.stack([_consistency(maps[k], final) for k in range(len(maps) - 1)])
    return scores if per_sample else [float(v) for v in scores.mean(axis=1)]


def chance_corrected(consistency, floor):
    """Chance-corrected consistency per exit: `(c - floor) / (1 - floor)`.

    0 when exit k's map agrees with the final map no more than with another
    sample's (the chance floor), 1 when the maps are identical, negative below
    chance. Maps that grow alike across samples raise `c` and `floor` together, so
    they leave this figure where it was: it measures agreement *about this sample*.

    Args:
        consistency: per-exit consistencies (`attention_consistency`).
        floor: the same exits' chance floors (`chance_consistency`).

    Returns:
        A list of floats, NaN where the floor is 1 (every map the same: nothing left
        to correct against).

    Example:
    >>> chance_corrected([0.8, 0.9], [0.6, 0.5])      # [0.5, 0.8]
    """
    c = np.asarray(consistency, np.float64)
    f = np.asarray(floor, np.float64)
    if c.shape != f.shape:
        raise ValueError(f"consistency and floor differ in length: {c.shape} vs {f.shape}.")
    with np.errstate(invalid="ignore", divide="ignore"):
        corrected = np.where(f < 1, (c - f) / np.where(f < 1, 1 - f, 1.0), np.nan)
    return [float(v) for v in corrected]
