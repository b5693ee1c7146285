"""Int8 flash and TFLM arena of an early-exit model's segments, estimated before training.

`keras_egt.export.export_cascade` measures both (the flatbuffer's size; the arena
TFLM's recording allocator needs), but only for a trained model and only with
TensorFlow. An architecture search wants them before it trains a trial, on any
backend, so this module predicts them from the layers alone:

* **flash** of segment k: its int8 weights, int32 biases (one per output channel;
  batch norm folds into the conv before it, ReLU fuses into it), 12 bytes per
  quantization channel (a float32 scale and an int64 zero point; weights and biases
  are quantized per output channel), and the flatbuffer's own bookkeeping:
  `_PER_TENSOR` bytes per tensor (its name, shape and table), `_PER_OP` per
  operator, `_PER_OUTPUT` per signature output and `_BASE` per file.
* **arena** of segment k: the peak, over its operators in order, of the int8
  activations alive at that operator (inputs, outputs, and tensors a later operator
  or the segment's outputs still need; each buffer 16-byte aligned, as TFLM's
  planner places them), plus TFLM's persistent allocations: `_ARENA_BASE` bytes of
  interpreter state, `_ARENA_PER_TENSOR` per tensor and 8 bytes per output channel of
  every conv and dense (the requantization multiplier and shift).

The constants are read off the flatbuffers and allocations of exported models
(`tests/test_budget.py` checks the estimate against the export, within 10%, for
models not used to read them). Stages are traced by running them once on zeros, so
any backbone works; a sequential chain (this package's presets, plain CNNs) is
estimated most closely, and residual blocks add their skip tensor's lifetime.
"""

import math
import re

import numpy as np
from keras import layers as keras_layers
from keras import ops

__all__ = ["BudgetExceeded", "check_budget", "estimate_deployment", "parse_bytes"]

_BASE = 244
_PER_OUTPUT = 64
_PER_TENSOR = 84
_PER_OP = 72
_PER_CHANNEL = 12
_ARENA_BASE = 2500
_ARENA_PER_TENSOR = 12
_ALIGN = 16

# Layers that TFLite folds or fuses into the conv or dense before them.
_FUSED = (keras_layers.BatchNormalization, keras_layers.ReLU)
_IDENTITY = (keras_layers.Dropout, keras_layers.InputLayer, keras_layers.Identity,
             keras_layers.SpatialDropout2D, keras_layers.GaussianNoise)
_WEIGHTED = (keras_layers.Conv2D, keras_layers.DepthwiseConv2D, keras_layers.Dense)


class BudgetExceeded(ValueError):
    """An architecture whose estimated int8 flash or TFLM arena is over the budget."""


def parse_bytes(text):
    """Reads a size such as `"256KiB"`, `"64 KiB"`, `"1MiB"`, `"200kB"` or `"65536"`.

    Args:
        text: a number of bytes, optionally with a unit: B, kB (1000), KiB (1024),
            MB, MiB; case-insensitive.

    Returns:
        An int number of bytes (> 0).

    Example:
    >>> parse_bytes("256KiB")
    262144
    """
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmM]i?[bB]|[bB])?\s*", str(text))
    units = {"b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2}
    if not match:
        raise ValueError(
            f"Cannot read {text!r} as a size: write a number of bytes with an optional "
            "unit, e.g. '256KiB', '64 KiB', '1MiB' or '200000'."
        )
    size = float(match.group(1)) * units[(match.group(2) or "b").lower()]
    if not size >= 1 or not math.isfinite(size):
        raise ValueError(f"A size must be at least 1 byte, got {text!r}.")
    return int(size)


def _aligned(nbytes):
    return -(-int(nbytes) // _ALIGN) * _ALIGN


class _Segment:
    """The operators of one int8 segment: tensors with their sizes and lifetimes."""

    def __init__(self):
        self.sizes = []      # activation bytes per tensor
        self.born = []       # the operator index writing each tensor (0: the input)
        self.uses = []       # the last operator index reading each tensor
        self.ops = 0
        self.tensors = 0     # every tensor, constants included
        self.channels = 0    # quantization channels
        self.data = 0        # constant bytes (weights, biases, shapes)
        self.requant = 0     # output channels of convs and dense layers

    def activation(self, elements):
        self.sizes.append(int(elements))
        self.born.append(self.ops)
        self.uses.append(self.ops)
        self.tensors += 1
        self.channels += 1
        return len(self.sizes) - 1

    def op(self, inputs, elements, weights=0, channels_out=0, constants=0):
        """One operator reading `inputs` (tensor indices), writing `elements` int8 values."""
        for t in inputs:
            self.uses[t] = self.ops
        out = self.activation(elements)
        self.uses[out] = self.ops
        if weights:
            self.tensors += 2
            self.channels += 2 * channels_out
            self.data += weights + 4 * channels_out
            self.requant += channels_out
        self.tensors += constants
        self.data += 8 * constants
        self.ops += 1
        return out

    def keep(self, t):
        self.uses[t] = max(self.uses[t], self.ops)

    def flash(self, outputs):
        return (_BASE + _PER_OUTPUT * outputs + _PER_TENSOR * self.tensors + _PER_OP * self.ops
                + _PER_CHANNEL * self.channels + self.data)

    def arena(self):
        peak = max(
            sum(_aligned(size) for size, born, used in zip(self.sizes, self.born, self.uses)
                if born <= step <= used)
            for step in range(self.ops + 1)
        )
        return peak + _ARENA_BASE + _ARENA_PER_TENSOR * self.tensors + 8 * self.requant


def _elements(shape):
    return int(np.prod([int(d) for d in tuple(shape)[1:]]))


def _trace_stage(stage, x, segment, source):
    """Runs `stage` on `x` once and adds its operators to `segment`; returns (y, tensor)."""
    from keras_egt.costs import trace_leaf_calls

    calls = []
    keep_alive = []  # ids must not be reused during the trace

    def record(layer, inputs, output):
        keep_alive.extend(inputs + [output])
        calls.append((layer, [id(t) for t in inputs], id(output), tuple(output.shape)))

    y = trace_leaf_calls(stage, x, record)
    where = {id(x): source}
    fusable = set()   # tensors written by a conv or dense (a BN or ReLU after folds in)
    for layer, inputs, output, shape in calls:
        inputs = [where[i] for i in inputs if i in where] or [source]
        if isinstance(layer, _IDENTITY) or (
            isinstance(layer, _FUSED) and inputs[0] in fusable
        ) or (isinstance(layer, keras_layers.Activation) and inputs[0] in fusable):
            where[output] = inputs[0]
            continue
        elements = _elements(shape)
        if isinstance(layer, _WEIGHTED):
            kernel = int(np.prod(layer.kernel.shape))
            channels = int(shape[-1])
            t = segment.op(inputs, elements, weights=kernel, channels_out=channels)
            fusable.add(t)
        elif isinstance(layer, (keras_layers.Reshape, keras_layers.Flatten)):
            t = segment.op(inputs, elements, constants=1)
        else:
            t = segment.op(inputs, elements)
        where[output] = t
    return y, where.get(id(y), source)


def _trace_head(head, features, segment, source):
    """Adds exit head k's operators (see `keras_egt.layers.ExitHead`)."""
    _, h, w, c = (int(d) for d in features.shape)
    hidden = head.attention.reduce.filters
    rows, cols = (d // p for d, p in zip((h, w), head.pool_size(features.shape)))
    steps = [
        ("reduce", [source], h * w * hidden, c * hidden, hidden, 0),
        ("score", None, h * w, 9 * hidden, 1, 0),
        ("sigmoid", None, h * w, 0, 0, 0),
        ("mul", "F", h * w * c, 0, 0, 0),
        ("pool", None, rows * cols * c, 0, 0, 0),
        ("reshape", None, rows * cols * c, 0, 0, 1),
        ("dense", None, head.num_classes, rows * cols * c * head.num_classes,
         head.num_classes, 0),
        ("softmax", None, head.num_classes, 0, 0, 0),
    ]
    previous = source
    for _, inputs, elements, weights, channels, constants in steps:
        inputs = [previous, source] if inputs == "F" else (inputs or [previous])
        previous = segment.op(inputs, elements, weights=weights, channels_out=channels,
                              constants=constants)
    return previous


def estimate_deployment(model):
    """Estimates each int8 segment's flash and TFLM arena, before training.

    Args:
        model: an `EarlyExitModel` (built; its weights need not be trained).

    Returns:
        A dict: `flash_bytes` and `arena_bytes` (lists, one per segment),
        `total_flash_bytes` (all segments) and `max_arena_bytes` (the largest
        arena, which is what a cascade that runs one segment at a time needs).

    Example:
    >>> estimate = estimate_deployment(EarlyExitMCU(9, (64, 64, 2)))
    >>> estimate["total_flash_bytes"] < 256 * 1024
    True
    """
    x = ops.zeros((1,) + tuple(model.image_shape), dtype=model.compute_dtype)
    flash, arena = [], []
    for k, (stage, head) in enumerate(zip(model.stages, model.heads)):
        segment = _Segment()
        source = segment.activation(_elements(x.shape))
        x, features = _trace_stage(stage, x, segment, source)
        last = k == model.num_exits - 1
        probabilities = _trace_head(head, x, segment, features)
        segment.keep(probabilities)
        if not last:
            segment.keep(features)  # a segment output: alive to the end
        flash.append(segment.flash(1 if last else 2))
        arena.append(segment.arena())
    return {"flash_bytes": flash, "arena_bytes": arena, "total_flash_bytes": int(sum(flash)),
            "max_arena_bytes": int(max(arena))}


def check_budget(model, flash_budget=None, arena_budget=None):
    """Raises `BudgetExceeded` when the estimate of `model` is over either budget.

    Args:
        model: an `EarlyExitModel`.
        flash_budget: bytes of flash for all segments (an int or `"256KiB"`), or None.
        arena_budget: bytes of the largest TFLM arena, or None.

    Returns:
        The `estimate_deployment` dict.
    """
    estimate = estimate_deployment(model)
    over = []
    if flash_budget is not None and estimate["total_flash_bytes"] > parse_bytes(flash_budget):
        over.append(f"flash {estimate['total_flash_bytes']:,} > {parse_bytes(flash_budget):,} bytes")
    if arena_budget is not None and estimate["max_arena_bytes"] > parse_bytes(arena_budget):
        over.append(f"arena {estimate['max_arena_bytes']:,} > {parse_bytes(arena_budget):,} bytes")
    if over:
        raise BudgetExceeded("Estimated int8 deployment over budget: " + "; ".join(over) + ".")
    return estimate
