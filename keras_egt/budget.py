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

from keras_egt.mcu_stages import parse_block, resolve_stages

__all__ = ["ArchitectureTooLarge", "BudgetExceeded", "architecture_figures",
           "check_architecture", "check_budget", "estimate_deployment", "parse_bytes"]

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


class ArchitectureTooLarge(ValueError):
    """An architecture string far beyond any microcontroller, refused before it is built."""


# Sanity limits of `check_architecture`, far beyond any microcontroller: the largest
# hold a few MiB of flash and one or two MiB of SRAM, and a Cortex-M7 at 480 MHz runs
# about 1 G int8 MACs a second. Float32 training keeps every layer's output for a
# whole batch (4 bytes, conv, batch norm and ReLU apart, times the batch), so the
# activation limit also keeps training within a host's memory: past it, a TF OOM
# after minutes of building and tracing is what the user would get instead.
MAX_PARAMETERS = 64 * 2**20
MAX_ACTIVATION_BYTES = 16 * 2**20
MAX_MACS = 10**10
# What the host message quotes: float32 bytes per int8 activation byte kept in
# training (conv, batch norm and ReLU outputs, 4 bytes each) at the default batch.
_TRAINING_BYTES = 3 * 4
_TRAINING_BATCH = 32


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


def _block_figures(block, shape):
    """`(parameters, macs, activation elements, output shape)` of one MCU block.

    As `keras_egt.mcu.mcu_backbone` builds it: `c<f>` a 3x3 conv without bias, `s<f>`
    a 3x3 depthwise conv then a 1x1 conv, each conv followed by batch norm (4
    values per channel) and ReLU (fused in int8, not counted), `p` a 2x2 max pool.
    """
    h, w, c = shape
    kind, filters, pool = parse_block(block)
    if kind == "c":
        parameters, macs = 9 * c * filters + 4 * filters, h * w * 9 * c * filters
        elements = h * w * filters
    else:
        parameters = 9 * c + 4 * c + c * filters + 4 * filters
        macs = h * w * 9 * c + h * w * c * filters
        elements = h * w * c + h * w * filters
    if pool:
        h, w = h // 2, w // 2
        elements += h * w * filters
    return parameters, macs, elements, (h, w, filters)


def architecture_figures(stages, input_shape):
    """Parameters, MACs and int8 activation bytes of an MCU architecture, without building it.

    Counts the backbone (`keras_egt.mcu`'s blocks) from the block strings alone, so
    an absurd architecture is refused in microseconds rather than after a model
    build that may not fit in memory. The exit heads are not counted.

    Args:
        stages: an `EarlyExitMCU` stages argument (`"c8p s16p | c64"`, a preset name
            or nested lists; see `keras_egt.mcu_stages.resolve_stages`).
        input_shape: `(height, width, channels)`.

    Returns:
        A dict: `architecture` (the block string), `parameters`, `macs` (per
        sample) and `activation_bytes` (every layer's int8 output per sample, the
        image included).

    Example:
    >>> architecture_figures("c8p | c16", (32, 32, 2))["parameters"]
    1392
    """
    stages = resolve_stages(stages)
    shape = tuple(int(d) for d in input_shape)
    parameters, macs, elements = 0, 0, math.prod(shape)
    for stage in stages:
        for block in stage:
            block_parameters, block_macs, block_elements, shape = _block_figures(block, shape)
            parameters, macs = parameters + block_parameters, macs + block_macs
            elements += block_elements
    return {"architecture": " | ".join(" ".join(stage) for stage in stages),
            "parameters": parameters, "macs": macs, "activation_bytes": elements}


def _mib(nbytes):
    return f"{nbytes / 2**20:,.1f} MiB"


def check_architecture(stages, input_shape):
    """Raises `ArchitectureTooLarge` for an MCU architecture far beyond any microcontroller.

    The limits (`MAX_PARAMETERS`, `MAX_ACTIVATION_BYTES` of int8 activations per
    sample, `MAX_MACS` per sample) are far above any microcontroller's flash, RAM
    and speed, so only a typo such as `'c100000 | c8'` trips them; without this
    check such a model fails minutes later with an out-of-memory error in training.
    Budgets are `check_budget`'s business.

    Args:
        stages: an `EarlyExitMCU` stages argument.
        input_shape: `(height, width, channels)`.

    Returns:
        The `architecture_figures` dict.

    Example:
    >>> check_architecture("c100000 | c8", (64, 64, 2))   # ArchitectureTooLarge
    """
    figures = architecture_figures(stages, input_shape)
    over = []
    if figures["activation_bytes"] > MAX_ACTIVATION_BYTES:
        training = figures["activation_bytes"] * _TRAINING_BYTES * _TRAINING_BATCH
        over.append(
            f"{_mib(figures['activation_bytes'])} of int8 activations per sample (float32 "
            f"training at batch {_TRAINING_BATCH} would need about {training / 2**30:,.0f} "
            f"GiB), over the limit of {_mib(MAX_ACTIVATION_BYTES)}")
    if figures["parameters"] > MAX_PARAMETERS:
        over.append(f"{figures['parameters']:,} parameters, over the limit of "
                    f"{MAX_PARAMETERS:,} ({_mib(MAX_PARAMETERS)} of int8 flash)")
    if figures["macs"] > MAX_MACS:
        over.append(f"{figures['macs']:,} MACs per sample, over the limit of {MAX_MACS:,}")
    if over:
        raise ArchitectureTooLarge(
            f"Architecture '{figures['architecture']}' on {tuple(input_shape)} inputs is far "
            f"beyond any microcontroller: {'; '.join(over)}. Use fewer filters per block "
            f"(the 'mcu' preset's widest is c96) or pool earlier (a trailing 'p'). "
            f"Received: stages={figures['architecture']!r}."
        )
    return figures


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
