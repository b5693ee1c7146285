"""`EarlyExitMCU` and its block strings (end-to-end checks: `test_backbones.py`, case "mcu")."""

import keras
import numpy as np
import pytest

import keras_egt as egt
from keras_egt import mcu
from kit import run_model_saving_test, run_serialization_test


@pytest.mark.parametrize("stages, expected", [
    ("c8p s16p | c32p | c64", (("c8p", "s16p"), ("c32p",), ("c64",))),
    ([["c4"], ["s8p"]], (("c4",), ("s8p",))),
    ("mcu", mcu.MCU_PRESETS["mcu"]),
])
def test_resolve_stages(stages, expected):
    assert mcu.resolve_stages(stages) == expected


@pytest.mark.parametrize("stages, message", [
    ("c8p", "at least 2 non-empty stages"),
    ("c8p | ", "at least 2 non-empty stages"),
    ("c8p | x16", "Unknown block 'x16'"),
    ("c0 | c8", "Unknown block 'c0'"),
    ("tiny", "Unknown MCU preset 'tiny'"),
    (5, "stages must be a preset name"),
])
def test_bad_stages_are_named(stages, message):
    with pytest.raises(ValueError, match=message):
        mcu.resolve_stages(stages)


def test_too_many_poolings_for_the_input_are_refused():
    with pytest.raises(ValueError, match=r"3 2x2 poolings need height and width >= 8"):
        mcu.mcu_backbone((4, 64, 2), "c4p | c4p | c4p")


def test_blocks_map_to_the_layers_and_shapes_the_strings_say():
    backbone = mcu.mcu_backbone((32, 32, 2), "c4p s8p | s16 | c16p")
    shapes = {n: tuple(backbone.get_layer(n).output.shape[1:]) for n in
              ("stage_1", "stage_2", "stage_3")}
    assert shapes == {"stage_1": (8, 8, 8), "stage_2": (8, 8, 16), "stage_3": (4, 4, 16)}
    dw = backbone.get_layer("stage_1_block_2_dw")
    assert isinstance(dw, keras.layers.DepthwiseConv2D) and dw.kernel_size == (3, 3)
    assert backbone.get_layer("stage_1_block_2_pw").kernel_size == (1, 1)
    assert backbone.get_layer("stage_1_block_1_conv").kernel_size == (3, 3)
    # Weights: 3x3 conv 2->4 (72), depthwise 3x3 on 4 (36), 1x1 4->8 (32), depthwise
    # on 8 (72), 1x1 8->16 (128), 3x3 conv 16->16 (2304); batch norm 4 per channel.
    convs = 72 + 36 + 32 + 72 + 128 + 2304
    norms = 4 * (4 + 4 + 8 + 8 + 16 + 16)
    assert backbone.count_params() == convs + norms


def test_model_exits_and_serialization(tmp_path):
    model = egt.EarlyExitMCU(3, (32, 32, 2), stages="c4p s8p | s16p | c16",
                             consistency_weight=[0.1, 0.2])
    assert model.num_exits == 3 and model.exit_layers == ["stage_1", "stage_2", "stage_3"]
    x = np.random.default_rng(0).random((2, 32, 32, 2)).astype("float32")
    assert [tuple(t.shape) for t in model(x)] == [(2, 3)] * 3
    revived = run_serialization_test(model)
    assert revived.stages_spec == model.stages_spec
    run_model_saving_test(model, x, tmp_path)
    preset = egt.EarlyExitMCU(9, (64, 64, 2))
    assert preset.get_config()["stages"] == "mcu"
