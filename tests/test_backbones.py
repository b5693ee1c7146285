"""Early exits on three backbones: the paper preset, MobileNetV2 and a small Functional CNN.

Each is trained once per process (`backbone_cases`) with λ > 0 on plain labels of
the blob task, then checked end to end: `.keras` round trip, evaluate, the cascade,
threshold calibration and, on TensorFlow, the int8 export run on TFLM against the
float cascade. Also: cuts across a residual connection, entropy thresholds at
export, mixed precision, symbolic exit heads, the compact progress bar and QAT's
generic tf_keras mirror.
"""

import contextlib
import io
import re

import keras
import numpy as np
import pytest

import keras_egt as egt
from backbone_cases import CASES, NUM_CLASSES, build, data, deployed, trained

# Held-out agreement of the int8 TFLM cascade with the float cascade (issue 11).
MIN_LABEL_AGREEMENT = 0.98


@pytest.mark.parametrize("name", CASES)
def test_fit_with_consistency_and_plain_labels(name):
    model, history = trained(name)
    assert model.consistency_weight == 0.3
    k = model.num_exits
    assert k == {"preset": 5, "mobilenet_v2": 4, "functional": 3, "mcu": 3}[name]
    for key in ["loss", "consistency", "consistency_loss"] + [
        f"exit_{i + 1}_accuracy" for i in range(k)
    ] + [f"exit_{i + 1}_consistency" for i in range(k - 1)]:
        assert key in history and len(history[key]) >= 1, key
    assert history["loss"][-1] < history["loss"][0]
    d = data()
    probabilities = egt.metrics.exit_probabilities(model, d["x_test"])
    assert probabilities.shape == (k, len(d["x_test"]), NUM_CLASSES)
    # Learned, not degenerate: the best exit is well above chance (1/3).
    best = max(np.mean(p.argmax(-1) == d["y_test"]) for p in probabilities)
    assert best > 0.8
    maps = model.attention_maps(d["x_test"][:4])
    assert [tuple(m.shape[1:3]) for m in maps] == [s[:2] for s in model.feature_shapes]
    np.testing.assert_allclose(
        [keras.ops.convert_to_numpy(m).sum(axis=(1, 2, 3)) for m in maps], 1.0, atol=1e-4
    )


@pytest.mark.parametrize("name", CASES)
def test_keras_round_trip(name, tmp_path):
    model, _ = trained(name)
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is type(model) and loaded.num_exits == model.num_exits
    assert loaded.exit_layers == model.exit_layers
    x = data()["x_test"][:8]
    for a, b in zip(model(x, training=False), loaded(x, training=False)):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(a),
                                   keras.ops.convert_to_numpy(b), atol=1e-5)


@pytest.mark.parametrize("name", CASES)
def test_evaluate_cascade_and_calibrate(name):
    model, _ = trained(name)
    d = data()
    k = model.num_exits
    probabilities = egt.metrics.exit_probabilities(model, d["x_test"])
    cascade = egt.Cascade(model, threshold=0.9)
    labels, exits = cascade.predict(d["x_test"])
    # Independent reference: the first exit whose max probability reaches 0.9.
    confident = probabilities.max(-1) >= 0.9
    confident[-1] = True
    expected_exits = confident.argmax(0)
    np.testing.assert_array_equal(exits, expected_exits)
    np.testing.assert_array_equal(
        labels, probabilities.argmax(-1)[expected_exits, np.arange(len(labels))])
    report = egt.evaluate(model, d["x_test"], d["y_test"], threshold=0.9, timing=False)
    assert len(report.exit_accuracy) == k and len(report.consistency) == k - 1
    assert report.accuracy == pytest.approx(np.mean(labels == d["y_test"]))
    assert f"Exit {k - 1}" in report.to_markdown()
    thresholds = egt.calibrate_thresholds(model, d["x_val"], d["y_val"], max_accuracy_drop=0.02)
    assert len(thresholds) == k
    val_probabilities = egt.metrics.exit_probabilities(model, d["x_val"])
    val_labels, _ = egt.Cascade(model, thresholds).decide(val_probabilities)
    final = np.mean(val_probabilities[-1].argmax(-1) == d["y_val"])
    assert np.mean(val_labels == d["y_val"]) >= final - 0.02 - 1e-9


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("name", CASES)
def test_int8_export_runs_on_tflm_like_the_float_cascade(name):
    model, _ = trained(name)
    out, manifest = deployed(name)
    assert len(manifest["segments"]) == model.num_exits
    runner = egt.export.load_cascade(out, runtime="tflm")
    d = data()
    x = np.concatenate([d["x_val"], d["x_test"]])
    float_labels, _ = egt.Cascade(model, threshold=0.9).predict(x)
    int8_labels, int8_exits = runner.predict(x)
    assert np.mean(int8_labels == float_labels) >= MIN_LABEL_AGREEMENT
    # TFLM's early stops match the int8 exit rule on every segment's output.
    labels, exits = egt.export.decide_int8(runner.run_segments(x), runner.thresholds_int8)
    np.testing.assert_array_equal(labels, int8_labels)
    np.testing.assert_array_equal(exits, int8_exits)


def test_a_cut_across_a_residual_connection_is_refused():
    import backbone_cases

    backbone = backbone_cases.functional_backbone()
    # r2 lies on the residual branch p1 -> c2 -> r2 -> add2; p1's output skips over it.
    with pytest.raises(ValueError, match=r"after 'r2'.*'p1'.*Valid cuts nearby: p1, add2"):
        egt.EarlyExitModel(backbone, ["r2", "add2", "r3"], NUM_CLASSES)
    mobilenet = backbone_cases.mobilenet_v2_backbone()
    assert "block_5_project_BN" not in egt.valid_cuts(mobilenet)
    with pytest.raises(ValueError, match=r"block_5_project_BN.*block_4_add.*block_5_add"):
        egt.EarlyExitModel(mobilenet, ["block_2_add", "block_5_project_BN", "block_12_add"],
                           NUM_CLASSES)


def test_entropy_thresholds_are_refused_at_export(tmp_path):
    model, _ = trained("functional")
    d = data()
    thresholds = egt.calibrate_thresholds(model, d["x_val"], d["y_val"], criterion="entropy")
    with pytest.raises(ValueError, match="entropy"):
        egt.export.export_cascade(model, tmp_path / "deploy", d["x_train"][:8],
                                  threshold=thresholds)
    assert not (tmp_path / "deploy").exists()


@pytest.mark.parametrize("name", ["preset", "functional"])
def test_mixed_precision(name):
    # A user's backbone takes the policy it was built under; the preset builds its own.
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16" if name == "functional" else "float32")
    try:
        model = build(name, dtype="mixed_bfloat16")
    finally:
        keras.config.set_dtype_policy(previous)
    d = data()
    model.compile(optimizer="adam")
    model.fit(d["x_train"][:8], d["y_train"][:8], epochs=1, batch_size=8, verbose=0)
    outputs = model(d["x_train"][:2])
    assert [keras.backend.standardize_dtype(o.dtype) for o in outputs] == ["float32"] * len(outputs)
    layers = list(model._flatten_layers(include_self=False, recursive=True))
    convs = [layer for layer in layers if isinstance(layer, (keras.layers.Conv2D,
                                                             keras.layers.Dense))]
    assert any(isinstance(layer, egt.ExitHead) for layer in layers) and convs
    # Every conv and dense layer computes in bfloat16, except the attention scores,
    # which feed a spatial softmax and stay float32 (`SpatialAttention`).
    scores = [layer for layer in convs if layer.name == "score"]
    assert scores and {layer.compute_dtype for layer in scores} == {"float32"}
    assert {layer.compute_dtype for layer in convs if layer not in scores} == {"bfloat16"}
    assert {layer.variable_dtype for layer in convs} == {"float32"}


def test_exit_head_on_symbolic_tensors():
    features = keras.Input((8, 8, 16))
    head = egt.ExitHead(NUM_CLASSES)
    logits, attention = head(features, return_attention=True)
    assert tuple(logits.shape) == (None, NUM_CLASSES)
    assert tuple(attention.shape) == (None, 8, 8, 1)
    functional = keras.Model(features, head(features))
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 16)).astype("float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(functional(x)),
                               keras.ops.convert_to_numpy(head(x)), atol=1e-6)


@pytest.mark.parametrize("validation", [False, True])
def test_compact_progress_bar_fits_100_columns(validation):
    model = build("functional")
    d = data()
    model.compile(optimizer="adam", metrics=["accuracy"])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        history = model.fit(d["x_train"][:64], d["y_train"][:64], epochs=2, batch_size=32,
                            validation_data=(d["x_val"][:32], d["y_val"][:32]) if validation
                            else None, verbose=1)
    # What a terminal shows: without colour codes, backspaces and trailing padding.
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.getvalue()).replace("\b", "")
    printed = [line.rstrip() for chunk in text.split("\n") for line in chunk.split("\r")]
    printed = [line for line in printed if line]
    assert any("cons:" in line and " acc:" in line for line in printed)
    assert any("val_acc:" in line for line in printed) == validation
    assert max(len(line) for line in printed) < 100
    assert not any("exit_1_loss" in line for line in printed)
    k = model.num_exits
    for prefix in ["", "val_"] if validation else [""]:
        for key in ["loss", "consistency"] + [f"exit_{i + 1}_{m}" for i in range(k)
                                              for m in ("loss", "accuracy")]:
            assert len(history.history[prefix + key]) == 2, prefix + key


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("name", CASES)
def test_qat_mirror_is_rebuilt_from_the_graph(name):
    from keras_egt.export import qat

    model, _ = trained(name)
    mirror, pairs = qat.build_mirror(model)
    x = data()["x_test"][:16]
    expected = egt.metrics.exit_probabilities(model, x)
    np.testing.assert_allclose(np.stack([np.asarray(p) for p in mirror(x)]), expected, atol=1e-5)
    weighted = {id(layer) for layer in model.backbone.layers if layer.weights} & {
        id(layer) for stage in model.stages for layer in stage.layers}
    if name != "preset":  # the preset's weights sit in ConvBlock sublayers
        assert weighted <= {id(layer) for layer, _, _ in pairs}
    kernel, bias = mirror.get_layer("h1_classifier").get_weights()
    mirror.get_layer("h1_classifier").set_weights([3.0 * kernel, bias])
    with pytest.raises(ValueError, match="mirror"):
        qat.check_mirror(model, mirror, x)


@pytest.mark.tensorflow_only
def test_qat_names_an_unsupported_layer():
    from keras_egt.export import qat

    inputs = keras.Input((32, 32, 2))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = keras.layers.LayerNormalization(name="odd_norm")(x)
    x = keras.layers.MaxPooling2D(2, name="pool")(x)
    model = egt.EarlyExitModel(keras.Model(inputs, x), ["conv", "pool"], NUM_CLASSES)
    with pytest.raises(ValueError, match=r"'odd_norm'.*LayerNormalization.*supported are"):
        qat.build_mirror(model)


@pytest.mark.tensorflow_only
def test_quantization_aware_finetune_on_a_functional_backbone():
    from keras_egt.export import qat

    model, _ = trained("functional")
    d = data()
    tuned, history = qat.quantization_aware_finetune(
        model, d["x_train"][:64], d["y_train"][:64], epochs=1, return_history=True)
    assert type(tuned) is type(model) and tuned is not model
    assert np.isfinite(history["loss"]).all()
    changed = [layer.name for layer, twin in zip(model.backbone.layers, tuned.backbone.layers)
               if layer.weights and not all(np.array_equal(np.asarray(a), np.asarray(b))
                                           for a, b in zip(layer.get_weights(),
                                                           twin.get_weights()))]
    assert "c1" in changed and "sep3" in changed
    probabilities = egt.metrics.exit_probabilities(tuned, d["x_test"])
    assert np.mean(probabilities[-1].argmax(-1) == d["y_test"]) > 0.8
