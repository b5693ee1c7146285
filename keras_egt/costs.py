"""Multiply-accumulate (MAC) counts of an early-exit model, layer by layer.

Every stage and exit head runs once on a one-sample batch of zeros while each of
its leaf layers records the shapes it sees; each layer then counts its own MACs for
one sample:

| layer | MACs |
|---|---|
| `Conv2D` (any `BaseConv`, groups included) | `out_elements_per_channel * kernel_area * C_in / groups * C_out` |
| `DepthwiseConv2D` | `H_out * W_out * kernel_area * C_in * depth_multiplier` |
| `SeparableConv2D` | the depthwise part plus a 1x1 conv from `C_in * depth_multiplier` to `C_out` |
| `Conv2DTranspose` | `H_in * W_in * kernel_area * C_in * C_out` |
| `Dense` | `rows * units_in * units` |
| `AveragePooling2D`, `GlobalAveragePooling2D` | one add per input element |
| `Add`, `Subtract`, `Multiply`, `Average` | one per output element per extra input |
| `ExitHead`'s gating and pooling | `H * W * C` each (an elementwise multiply, then adds) |

Max pooling, activations and reshapes are comparisons or moves, not MACs, and
batch normalization after a convolution folds into it at export, so they count 0.
`tests/test_costs.py` checks these counts against an independent count read from
the exported `.tflite` segments' operator shapes.
"""

import math
import weakref

import numpy as np
from keras import layers as keras_layers
from keras import ops

__all__ = ["exit_macs", "final_only_macs", "head_macs", "layer_macs", "segment_macs",
           "stage_macs"]

_CACHE = weakref.WeakKeyDictionary()


def _count(shape):
    return int(math.prod(int(d) for d in shape))


def layer_macs(layer, input_shapes, output_shape):
    """MACs of one call of a leaf layer for one sample.

    Args:
        layer: a Keras layer.
        input_shapes: the shapes of its tensor inputs, batch axis first.
        output_shape: the shape of its output, batch axis first.

    Returns:
        An int (0 for layers that do no multiply-accumulates).

    Example:
    >>> layer_macs(keras.layers.Conv2D(4, 3, padding="same"), [(1, 8, 8, 2)], (1, 8, 8, 4))
    2304
    """
    out = tuple(output_shape)[1:]
    first = tuple(input_shapes[0])[1:]
    if isinstance(layer, keras_layers.SeparableConv2D):
        area = _count(layer.kernel_size)
        mid = first[-1] * layer.depth_multiplier
        return _count(out[:-1]) * (area * mid + mid * out[-1])
    if isinstance(layer, keras_layers.DepthwiseConv2D):
        return _count(out[:-1]) * _count(layer.kernel_size) * first[-1] * layer.depth_multiplier
    if isinstance(layer, (keras_layers.Conv1DTranspose, keras_layers.Conv2DTranspose,
                          keras_layers.Conv3DTranspose)):
        return _count(first[:-1]) * _count(layer.kernel_size) * first[-1] * out[-1]
    if isinstance(layer, (keras_layers.Conv1D, keras_layers.Conv2D, keras_layers.Conv3D)):
        groups = getattr(layer, "groups", 1) or 1
        return _count(out[:-1]) * _count(layer.kernel_size) * (first[-1] // groups) * out[-1]
    if isinstance(layer, keras_layers.Dense):
        return _count(first[:-1]) * first[-1] * out[-1]
    if isinstance(layer, (keras_layers.AveragePooling1D, keras_layers.AveragePooling2D,
                          keras_layers.AveragePooling3D, keras_layers.GlobalAveragePooling1D,
                          keras_layers.GlobalAveragePooling2D,
                          keras_layers.GlobalAveragePooling3D)):
        return _count(first)
    if isinstance(layer, (keras_layers.Add, keras_layers.Subtract, keras_layers.Multiply,
                          keras_layers.Average)):
        return _count(out) * (len(input_shapes) - 1)
    return 0


def _leaves(layer):
    children = list(layer._flatten_layers(include_self=False, recursive=True))
    return [c for c in children if not list(c._flatten_layers(include_self=False))] or [layer]


def trace_leaf_calls(part, x, on_call):
    """Runs `part` on `x` once (inference mode), reporting every leaf layer call.

    Args:
        part: a stage (layer or Functional model) or an `ExitHead`.
        x: its input tensor.
        on_call: `on_call(layer, inputs, output)` after each leaf call, with the
            tensors it read (a list) and the first tensor it returned.

    Returns:
        The outputs of `part(x)`.
    """
    from keras_egt.layers import ExitHead

    patched = []

    def watch(layer):
        original = layer.call

        def call(*args, **kwargs):
            outputs = original(*args, **kwargs)
            tensors = [a for a in args if hasattr(a, "shape")]
            if not tensors and args and isinstance(args[0], (list, tuple)):
                tensors = [a for a in args[0] if hasattr(a, "shape")]
            if tensors:
                on_call(layer, tensors, outputs[0] if isinstance(outputs, (list, tuple))
                        else outputs)
            return outputs

        layer.call = call
        patched.append(layer)

    try:
        for leaf in _leaves(part):
            watch(leaf)
        return part(x) if isinstance(part, ExitHead) else part(x, training=False)
    finally:
        for layer in patched:
            del layer.call


def _record_macs(part, x):
    """Runs `part` on `x` once and sums `layer_macs` over the leaf layers it calls."""
    from keras_egt.layers import ExitHead

    total = [0]

    def count(layer, inputs, output):
        total[0] += layer_macs(layer, [tuple(t.shape) for t in inputs], tuple(output.shape))

    outputs = trace_leaf_calls(part, x, count)
    if isinstance(part, ExitHead):
        _, h, w, c = x.shape
        total[0] += 2 * int(h) * int(w) * int(c)
    return total[0], outputs


def _macs(model):
    if model in _CACHE:
        return _CACHE[model]
    x = ops.zeros((1,) + tuple(model.image_shape), dtype=model.compute_dtype)
    stages, heads = [], []
    for stage, head in zip(model.stages, model.heads):
        count, x = _record_macs(stage, x)
        stages.append(count)
        heads.append(_record_macs(head, x)[0])
    _CACHE[model] = (tuple(stages), tuple(heads))
    return _CACHE[model]


def stage_macs(model):
    """MACs of each backbone stage for one sample.

    Args:
        model: an `EarlyExitModel` (e.g. an `EarlyExitCNN`).

    Returns:
        A list of K ints.

    Example:
    >>> stage_macs(EarlyExitCNN(9, (64, 64, 2)))[0]   # one 3x3 conv: 64*64*9*2*64
    4718592
    """
    return list(_macs(model)[0])


def head_macs(model):
    """MACs of each exit head for one sample.

    On features `H x W x C`, with `h` hidden attention channels and `n` classes:
    1x1 conv `H*W*C*h`, 3x3 score conv `H*W*9*h`, gating and pooling `2*H*W*C`,
    dense `G*C*n` over the `G` cells of the pooled grid.

    Args:
        model: an `EarlyExitModel`.

    Returns:
        A list of K ints.
    """
    return list(_macs(model)[1])


def segment_macs(model):
    """MACs of each exported segment (stage k and head k) for one sample."""
    return [s + h for s, h in zip(stage_macs(model), head_macs(model))]


def exit_macs(model):
    """Cost of a sample that leaves the cascade at each exit.

    Leaving at exit k means running stages 1..k and heads 1..k (every head on the
    way was evaluated and found not confident enough).

    Args:
        model: an `EarlyExitModel`.

    Returns:
        A list of K ints, non-decreasing.

    Example:
    >>> exit_macs(model)[-1] > final_only_macs(model)   # the early heads cost extra
    True
    """
    return [int(v) for v in np.cumsum(segment_macs(model))]


def final_only_macs(model):
    """MACs of the model without early exit: every stage and the final head."""
    return sum(stage_macs(model)) + head_macs(model)[-1]
