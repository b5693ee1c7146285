"""Input rules of the core API (issue 24): exit layers as objects, group ids, absurd
architectures, integer images and NaN thresholds.

Backend-agnostic: run once per backend.
"""

import math
import os
import subprocess
import sys
import warnings

import keras
import keras_tuner as kt
import numpy as np
import pytest

import keras_egt as egt
from keras_egt import arch_search, budget, calibration
from keras_egt.datasets import load_npz

SHAPE = (16, 16, 2)
NUM_CLASSES = 3


def _one_line(error):
    text = str(error.value)
    assert "\n" not in text, text
    return text


# --- exit layers: layer objects of one build -------------------------------------


def _mobilenet_v3():
    # Auto-named layers (re_lu_N, multiply_N) take their numbers from a per-process
    # counter, so a second build names them differently.
    return keras.applications.MobileNetV3Small(
        input_shape=(32, 32, 3), alpha=0.75, minimalistic=True, weights=None,
        include_top=False, include_preprocessing=False)


@pytest.fixture(scope="module")
def two_builds():
    return _mobilenet_v3(), _mobilenet_v3()


def _exit_objects(backbone):
    cuts = egt.valid_cuts(backbone)
    # An auto-named ReLU (4x4), then two residual adds (4x4, 2x2).
    return [backbone.get_layer(name) for name in
            (cuts[15], "expanded_conv_2_add", "expanded_conv_4_add")]


def _outputs(model, x):
    return np.stack([keras.ops.convert_to_numpy(o) for o in model(x, training=False)])


def test_exit_layers_as_objects_of_a_second_build(two_builds):
    first, second = two_builds
    layers = _exit_objects(second)
    assert layers[0].name.startswith("re_lu_")
    # The name read off the first build means another layer, or none, in the second.
    assert egt.valid_cuts(first)[15] != layers[0].name
    model = egt.EarlyExitModel(second, layers, NUM_CLASSES, batchnorm_momentum=0.9)
    assert model.exit_layers == [layer.name for layer in layers]
    ends = [stage.output._keras_history.operation for stage in model.stages]
    assert all(end is layer for end, layer in zip(ends, layers))
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    copy = egt.EarlyExitModel.from_config(model.get_config())
    copy.set_weights(model.get_weights())
    assert copy.exit_layers == model.exit_layers
    np.testing.assert_allclose(_outputs(copy, x), _outputs(model, x), atol=1e-5)
    # valid_cuts' `before` takes the layer or its name, as exit_layers does.
    assert egt.valid_cuts(second, before=layers[1]) == egt.valid_cuts(
        second, before=layers[1].name)


def _auto_named_backbone():
    layers = keras.layers
    inputs = keras.Input(SHAPE)
    x = layers.ReLU()(layers.Conv2D(4, 3, padding="same")(inputs))
    x = layers.MaxPooling2D(2)(x)
    x = layers.ReLU()(layers.Conv2D(8, 3, padding="same")(x))
    return keras.Model(inputs, x)


def test_auto_named_exits_picked_as_objects_reload_in_a_fresh_process(tmp_path):
    _auto_named_backbone()
    backbone = _auto_named_backbone()  # its layers' numbers count the first build's
    pool, relu = backbone.layers[-3], backbone.layers[-1]
    assert pool.name.startswith("max_pooling2d_") and pool.name != "max_pooling2d"
    model = egt.EarlyExitModel(backbone, [pool, relu], NUM_CLASSES)
    x = np.random.default_rng(0).normal(size=(2,) + SHAPE).astype("float32")
    path = tmp_path / "auto.keras"
    model.save(path)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "expected.npy", _outputs(model, x))
    # A fresh process counts its layers from zero: the stored names must still resolve.
    code = (
        "import sys, numpy as np, keras, keras_egt\n"
        "model = keras.saving.load_model(sys.argv[1] + '/auto.keras')\n"
        "x = np.load(sys.argv[1] + '/x.npy')\n"
        "out = np.stack([keras.ops.convert_to_numpy(o) for o in model(x, training=False)])\n"
        "np.testing.assert_allclose(out, np.load(sys.argv[1] + '/expected.npy'), atol=1e-5)\n"
        "print('EXITS', model.exit_layers)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                          text=True, env=env, timeout=300)
    assert f"EXITS {model.exit_layers}" in done.stdout, done.stdout + done.stderr


def test_a_name_from_another_build_names_the_fix(two_builds):
    first, second = two_builds
    names = {layer.name for layer in second.layers}
    stale = next(n for n in egt.valid_cuts(first) if n not in names)
    with pytest.raises(ValueError, match="pass the layer objects") as error:
        egt.EarlyExitModel(second, [stale, "expanded_conv_4_add"], NUM_CLASSES,
                           batchnorm_momentum=0.9)
    assert f"Received: exit_layer={stale!r}" in _one_line(error)


def test_a_layer_object_of_another_build_is_refused(two_builds):
    first, second = two_builds
    with pytest.raises(ValueError, match="another build") as error:
        egt.EarlyExitModel(second, [first.get_layer("expanded_conv_2_add"),
                                    second.get_layer("expanded_conv_4_add")],
                           NUM_CLASSES, batchnorm_momentum=0.9)
    assert "Received: exit_layer=" in _one_line(error)


# --- calibration groups ------------------------------------------------------------

N = 40


@pytest.fixture(scope="module")
def probabilities():
    # Confident early exits that agree with the final exit: certifiable at eps 0.3.
    rng = np.random.default_rng(0)
    labels = rng.integers(0, NUM_CLASSES, size=N)
    p = np.full((3, N, NUM_CLASSES), 0.02)
    p[:, np.arange(N), labels] = 0.96
    return p, labels


def _calibrate(probabilities, groups):
    p, y = probabilities
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return egt.calibrate_thresholds(None, None, y, 0.3, probabilities=p, groups=groups)


@pytest.mark.parametrize("groups, message", [
    ([None] * N, r"whole numbers or strings.*40 of 40 are not \(e\.g\. None\)"),
    ([1, None] * (N // 2), r"20 of 40 are not \(e\.g\. None\)"),
    ([0.0, math.nan] * (N // 2), r"20 of 40 are not \(e\.g\. nan\)"),
    ([1.0, math.inf] * (N // 2), r"e\.g\. inf"),
    ([1, 2.5] * (N // 2), r"e\.g\. 2\.5"),
    ([True, False] * (N // 2), r"e\.g\. True, False"),
    ([1, "a"] * (N // 2), r"mixes integer and string ids"),
    (["a", b"b"] * (N // 2), r"mixes bytes and string ids"),
    (list(range(N - 1)), r"one id per calibration sample \(40\).*shape \(39,\)"),
    (np.arange(N).reshape(2, -1), r"one id per calibration sample.*shape \(2, 20\)"),
    ("users", r"one id per calibration sample.*shape \(\)"),
])
def test_bad_groups_get_one_line_naming_them(probabilities, groups, message):
    with pytest.raises(ValueError, match=message) as error:
        _calibrate(probabilities, groups)
    text = _one_line(error)
    assert text.startswith("groups ") and "Received: groups" in text


def test_ids_are_whole_numbers_or_strings_and_group_alike(probabilities):
    users = np.arange(N) % 8
    reference = _calibrate(probabilities, users)
    for ids in (users.astype(float), [f"user {u}" for u in users], list(users.astype(np.int16)),
                np.array(users, dtype=object)):
        result = _calibrate(probabilities, ids)
        assert result.n == reference.n == 8
        assert list(result) == list(reference) and result.bound == reference.bound
    with pytest.raises(ValueError, match=r"e\.g\. 0\.5"):
        _calibrate(probabilities, users + 0.5)


def test_bad_groups_fail_before_the_inference_pass(monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the model ran before groups were checked")

    monkeypatch.setattr(calibration.metrics, "exit_probabilities", never)
    model = egt.EarlyExitMCU(NUM_CLASSES, SHAPE, stages="c4p | c8")
    x = np.zeros((4,) + SHAPE, "float32")
    with pytest.raises(ValueError, match=r"groups must hold whole numbers or strings"):
        egt.calibrate_thresholds(model, x, np.zeros(4, int), 0.3, groups=[None] * 4)


# --- absurd architectures ------------------------------------------------------------


def test_an_absurd_architecture_is_refused_with_its_figures():
    with pytest.raises(budget.ArchitectureTooLarge) as error:
        budget.check_architecture("c100000 | c8", (64, 64, 2))
    text = _one_line(error)
    # 64 * 64 * (2 + 100000 + 8) int8 bytes: the image, then each conv's output.
    activation = 64 * 64 * (2 + 100000 + 8)
    assert f"{activation / 2**20:,.1f} MiB of int8 activations per sample" in text
    assert "over the limit of 16.0 MiB" in text and "fewer filters" in text
    assert text.startswith("Architecture 'c100000 | c8' on (64, 64, 2) inputs")
    assert text.endswith("Received: stages='c100000 | c8'.")


@pytest.mark.parametrize("stages", ["c8p s16p | c32", "mcu", "c4p | s8p | c16"])
def test_figures_match_the_built_backbone(stages):
    # Independent reference: the weights Keras creates, and the outputs it traces.
    shape = (32, 32, 2) if stages != "mcu" else (64, 64, 2)
    figures = budget.check_architecture(stages, shape)
    backbone = egt.mcu.mcu_backbone(shape, stages)
    assert figures["parameters"] == sum(int(np.prod(w.shape)) for w in backbone.weights)
    kept = (keras.layers.InputLayer, keras.layers.Conv2D, keras.layers.DepthwiseConv2D,
            keras.layers.MaxPooling2D)
    elements = sum(int(np.prod(layer.output.shape[1:])) for layer in backbone.layers
                   if isinstance(layer, kept))
    assert figures["activation_bytes"] == elements


def test_parameters_and_macs_have_their_own_limits():
    # 16x16 keeps the activations small (2 MiB): only the weights and the MACs are absurd.
    with pytest.raises(budget.ArchitectureTooLarge, match=r"parameters, over the limit of "
                       r"67,108,864 \(64\.0 MiB of int8 flash\)") as error:
        budget.check_architecture("c4096 | c4096", (16, 16, 2))
    assert "MACs per sample, over the limit of 10,000,000,000" in _one_line(error)
    assert "activations" not in str(error.value)


def test_a_search_space_with_an_absurd_candidate_is_refused_up_front():
    space = arch_search.MCUSearchSpace([["c8p", "c100000p"], ["c8"]],
                                       attention_hidden_channels=[4])
    with pytest.raises(budget.ArchitectureTooLarge, match=r"'c100000p \| c8' on \(64, 64, 2\)"):
        arch_search.BudgetedHyperModel(NUM_CLASSES, (64, 64, 2), space=space)


def test_a_trial_whose_combination_is_absurd_is_rejected_untrained():
    # Each candidate passes with the other stage at its first; together 38.7 G MACs.
    space = arch_search.MCUSearchSpace([["c8", "c2048"], ["c8", "c2048"]],
                                       attention_hidden_channels=[4])
    hypermodel = arch_search.BudgetedHyperModel(NUM_CLASSES, (32, 32, 2), space=space)
    hp = kt.HyperParameters()
    space.declare(hp)
    hp.values.update(stage_1="c2048", stage_2="c2048")
    # The model is never looked at: the architecture alone is refused.
    with pytest.raises(kt.errors.FailedTrialError, match=r"rejected before training.*far "
                       r"beyond any microcontroller.*MACs per sample"):
        hypermodel.check_budget(hp, model=None)


# --- integer images ------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained():
    keras.utils.set_random_seed(3)
    rng = np.random.default_rng(3)
    levels = rng.integers(0, 256, size=(24,) + SHAPE, dtype=np.uint8)
    y = (levels[..., 0].mean(axis=(1, 2)) > 127.5).astype("int32")
    model = egt.EarlyExitMCU(NUM_CLASSES, SHAPE, stages="c4p | c8")
    model.compile(optimizer="adam", metrics=["accuracy"])
    model.fit(levels.astype("float32") / 255, y, epochs=1, batch_size=8, verbose=0)
    return model, levels, y


def _entry_points(model, y):
    return {
        "call": lambda x: model(x),
        "tensor call": lambda x: model(keras.ops.convert_to_tensor(x)),
        "predict": lambda x: model.predict(x, verbose=0),
        "fit": lambda x: model.fit(x, y, epochs=1, verbose=0),
        "model.evaluate": lambda x: model.evaluate(x, y, verbose=0),
        "attention_maps": lambda x: model.attention_maps(x),
        "Cascade": lambda x: egt.Cascade(model, 0.9).predict(x),
        "Cascade batch 1": lambda x: egt.Cascade(model, 0.9).predict(x[:2], batch_size=1),
        "evaluate": lambda x: egt.evaluate(model, x, y, timing=False),
        "calibrate_thresholds": lambda x: egt.calibrate_thresholds(model, x, y, 0.3),
        "exit_probabilities": lambda x: egt.metrics.exit_probabilities(model, x),
    }


ENTRY_POINTS = sorted(_entry_points(None, None))


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_uint8_images_are_refused_everywhere_with_the_loaders_fix(trained, entry):
    model, levels, y = trained
    with pytest.raises(ValueError, match=r"floating-point images.*astype\(\"float32\"\) / 255"
                       r"\. Received: (x|inputs)\.dtype=uint8\.$") as error:
        _entry_points(model, y)[entry](levels)
    _one_line(error)


@pytest.mark.parametrize("dtype, fix", [
    ("uint16", r"/ 65535"), ("int32", r"/ 255 for 8-bit levels"), ("bool", r"8-bit levels")])
def test_other_integer_images_are_refused(trained, dtype, fix):
    model, levels, _ = trained
    with pytest.raises(ValueError, match=fix + rf".*Received: x\.dtype={dtype}\."):
        egt.Cascade(model, 0.9).predict(levels.astype(dtype))


def test_the_fix_the_message_names_is_what_the_loaders_do(trained, tmp_path):
    model, levels, y = trained
    with pytest.raises(ValueError, match=r'x\.astype\("float32"\) / 255\.'):
        egt.Cascade(model, 0.9).predict(levels)
    np.savez(tmp_path / "levels.npz", x_train=levels, y_train=y)
    with pytest.warns(UserWarning, match="divided by 255"):
        (loaded, _), _ = load_npz(tmp_path / "levels.npz")
    fixed = levels.astype("float32") / 255
    np.testing.assert_array_equal(loaded, fixed)
    labels, exits = egt.Cascade(model, 0.9).predict(fixed)
    expected_labels, expected_exits = egt.Cascade(model, 0.9).predict(loaded)
    np.testing.assert_array_equal(labels, expected_labels)
    np.testing.assert_array_equal(exits, expected_exits)
    np.testing.assert_allclose(np.stack(model.predict(fixed, verbose=0)),
                               _outputs(model, loaded), atol=1e-5)


def test_predict_leaves_a_one_shot_generator_whole(trained):
    model, levels, _ = trained
    fixed = levels.astype("float32") / 255
    batches = ((fixed[i:i + 8],) for i in range(0, len(fixed), 8))
    outputs = model.predict(batches, verbose=0)
    assert [len(o) for o in outputs] == [len(fixed)] * model.num_exits
    with pytest.raises(ValueError, match="floating-point images"):
        model.predict(levels, verbose=0)


# --- NaN thresholds --------------------------------------------------------------------


@pytest.mark.parametrize("threshold, received", [
    (math.nan, "threshold=nan"),
    (np.float32("nan"), "threshold=np.float32(nan)"),
    ([0.9, math.nan], "threshold[1]=nan"),
    ("0.9", "threshold='0.9'"),
    (True, "threshold=True"),
    ([0.9, None], "threshold[1]=None"),
])
def test_bad_cascade_thresholds_get_one_line(trained, threshold, received):
    model, _, _ = trained
    with pytest.raises(ValueError, match=r"must be a number") as error:
        egt.Cascade(model, threshold)
    assert _one_line(error).endswith(f"Received: {received}.")


def test_calibrated_thresholds_with_nan_are_refused(trained):
    model, _, _ = trained
    thresholds = egt.calibration.CalibratedThresholds([math.nan, 2.0])
    with pytest.raises(ValueError, match=r"NaN compares false.*Received: threshold\[0\]=nan"):
        egt.Cascade(model, thresholds)


def test_thresholds_are_numbers_of_any_numeric_type_not_text():
    for threshold, expected in [(np.float32(0.5), (0.5, 2.0)), (np.array(0.25), (0.25, 2.0)),
                                (math.inf, (2.0, 2.0)), ([0, 7], (0.0, 2.0))]:
        assert egt.cascade.resolve_thresholds(threshold, 2) == expected
    for text in ("0.9", b"0.9", np.str_("0.9")):
        with pytest.raises(ValueError, match="not a number"):
            egt.cascade.resolve_thresholds(text, 2)
