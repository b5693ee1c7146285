"""MAC counts: `costs.layer_macs` on hand-made layers, and every segment's count against
an independent count read from the exported `.tflite` operators' tensor shapes."""

import math

import keras
import numpy as np
import pytest

from keras_egt import costs


def _macs(layer, *input_shapes):
    inputs = [keras.Input(s[1:], batch_size=1) for s in input_shapes]
    out = layer(inputs if len(inputs) > 1 else inputs[0])
    return costs.layer_macs(layer, input_shapes, tuple(out.shape))


def test_layer_macs_of_hand_made_cases():
    # 3x3 conv, 2 -> 4 channels, on 8x8 "same": each of the 8*8*4 outputs needs 3*3*2 MACs.
    assert _macs(keras.layers.Conv2D(4, 3, padding="same"), (1, 8, 8, 2)) == 8 * 8 * 4 * 9 * 2
    # Strided "valid" conv: (9 - 3) // 2 + 1 = 4 rows and columns of output.
    assert _macs(keras.layers.Conv2D(5, 3, strides=2), (1, 9, 9, 3)) == 4 * 4 * 5 * 9 * 3
    # Grouped conv: each output sees C_in / groups inputs.
    assert _macs(keras.layers.Conv2D(8, 1, groups=2), (1, 4, 4, 6)) == 4 * 4 * 8 * 3
    # Depthwise: one 3x3 filter per input channel (times the multiplier).
    assert _macs(keras.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2),
                 (1, 6, 6, 4)) == 6 * 6 * 4 * 2 * 9
    # Separable: the depthwise part, then a 1x1 conv from C_in * multiplier to C_out.
    assert _macs(keras.layers.SeparableConv2D(7, 3, padding="same"), (1, 6, 6, 4)) == (
        6 * 6 * 4 * 9 + 6 * 6 * 4 * 7)
    assert _macs(keras.layers.Dense(10), (1, 20)) == 200
    assert _macs(keras.layers.Dense(10), (1, 3, 20)) == 600  # applied on every row
    assert _macs(keras.layers.Add(), (1, 4, 4, 3), (1, 4, 4, 3), (1, 4, 4, 3)) == 2 * 48
    assert _macs(keras.layers.Multiply(), (1, 4, 4, 3), (1, 4, 4, 3)) == 48
    assert _macs(keras.layers.GlobalAveragePooling2D(), (1, 4, 4, 3)) == 48
    assert _macs(keras.layers.MaxPooling2D(2), (1, 4, 4, 3)) == 0
    assert _macs(keras.layers.ReLU(), (1, 4, 4, 3)) == 0


def test_stage_and_head_macs_of_the_preset_by_hand():
    import keras_egt as egt

    model = egt.EarlyExitCNN(3, (32, 32, 2), widths=(4, 8, 8, 16, 16))
    sizes, channels = [32, 16, 8, 4, 2], [2, 4, 8, 8, 16, 16]
    expected_stages = [s * s * 9 * channels[k] * channels[k + 1] for k, s in enumerate(sizes)]
    assert costs.stage_macs(model) == expected_stages
    expected_heads = []
    for k, size in enumerate([16, 8, 4, 2, 2]):  # features after each block's pooling
        c = channels[k + 1]
        hidden = max(8, c // 8)
        cells = min(size, 4) ** 2
        expected_heads.append(size * size * (c * hidden + 9 * hidden + 2 * c) + cells * c * 3)
    assert costs.head_macs(model) == expected_heads
    assert costs.exit_macs(model) == list(np.cumsum(np.add(expected_stages, expected_heads)))


def tflite_macs(path):
    """MACs of one `.tflite` model from its operators' tensor shapes (LiteRT, no keras_egt)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    shapes = {t["index"]: tuple(int(d) for d in t["shape"])
              for t in interpreter.get_tensor_details()}
    total = 0
    for op in interpreter._get_ops_details():
        name, inputs, outputs = op["op_name"], list(op["inputs"]), list(op["outputs"])
        out = shapes[outputs[0]]
        if name == "CONV_2D":  # filter (C_out, kh, kw, C_in)
            c_out, kh, kw, c_in = shapes[inputs[1]]
            total += math.prod(out[:-1]) * c_out * kh * kw * c_in
        elif name == "DEPTHWISE_CONV_2D":  # filter (1, kh, kw, C_out)
            _, kh, kw, c_out = shapes[inputs[1]]
            total += math.prod(out[:-1]) * c_out * kh * kw
        elif name == "FULLY_CONNECTED":  # weights (units, units_in)
            units, units_in = shapes[inputs[1]]
            total += math.prod(out) * units_in
        elif name in ("MUL", "ADD"):
            total += math.prod(out)
        elif name in ("AVERAGE_POOL_2D", "MEAN"):
            total += math.prod(shapes[inputs[0]])
    return total


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("name", ["preset", "mobilenet_v2", "functional", "mcu"])
def test_segment_macs_match_the_tflite_operators(name):
    import os

    from backbone_cases import deployed, trained

    model, _ = trained(name)
    out, manifest = deployed(name)
    counted = costs.segment_macs(model)
    assert [seg["macs"] for seg in manifest["segments"]] == counted
    for seg, macs in zip(manifest["segments"], counted):
        reference = tflite_macs(os.path.join(out, seg["file"]))
        assert reference > 0
        assert abs(macs - reference) <= 0.02 * reference, (seg["file"], macs, reference)
