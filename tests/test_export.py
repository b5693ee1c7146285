"""The split int8 TFLite cascade: export, checks, LiteRT/TFLM runtimes, QAT, CLI.

TensorFlow-only tests share one tiny trained model and one exported folder
(module-scoped). The int8 rule, decisions and input checks are backend-agnostic; a
model trained on JAX or PyTorch is exported through the TensorFlow subprocess in
those passes.
"""

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from fractions import Fraction

import keras
import numpy as np
import pytest

import keras_egt as egt
from keras_egt import export
from keras_egt.export import convert
from keras_egt.export import runtime as rt
from kit import BACKEND, blob_task

TINY = (4, 8, 8, 8, 8)
# Low enough that the tiny model's exits 2-5 all take samples (its confidences are
# far below the paper's 0.9), so the cascade logic is exercised at every segment.
THRESHOLD = 0.8
NUM_TRAIN = 192


def _trained_tiny(epochs=6):
    """A tiny model trained on blobs, with its (train, test) split."""
    x, y = blob_task(n=256)
    keras.utils.set_random_seed(1234)
    model = egt.EarlyExitCNN(3, (32, 32, 2), widths=TINY)
    model.compile("adam", metrics=["accuracy"])
    model.fit(x[:NUM_TRAIN], y[:NUM_TRAIN], epochs=epochs, batch_size=32, verbose=0)
    return model, (x[:NUM_TRAIN], y[:NUM_TRAIN]), (x[NUM_TRAIN:], y[NUM_TRAIN:])


@pytest.fixture(scope="module")
def trained():
    return _trained_tiny()


@pytest.fixture(scope="module")
def deployed(trained, tmp_path_factory):
    if BACKEND != "tensorflow":
        pytest.skip("TensorFlow-only fixture")
    model, (x_train, y_train), (x_test, y_test) = trained
    out = str(tmp_path_factory.mktemp("export") / "deploy")
    manifest = export.export_cascade(model, out, x_train[:32], threshold=THRESHOLD)
    return {"model": model, "dir": out, "manifest": manifest, "x_train": x_train,
            "y_train": y_train, "x_test": x_test, "y_test": y_test}


def _read(path):
    with open(path, "rb") as f:
        return f.read()


# ------------------------------------------------------------------ backend-agnostic


def _exact_threshold(t, scale, zero_point):
    """Smallest int8 q whose probability (q - z) * s reaches t, in exact arithmetic."""
    need = Fraction(t) / Fraction(scale) + zero_point  # q >= need
    q = math.ceil(need)
    return min(max(q, -128), 128)


def test_int8_threshold_hand_cases():
    softmax = (1 / 256, -128)  # TFLite's fixed int8 softmax output quantization
    assert export.int8_threshold(0.9, *softmax) == 103  # ceil(230.4) - 128
    assert export.int8_threshold(0.5, *softmax) == 0  # exactly representable: q = 0 fires
    assert export.int8_threshold(1.0, *softmax) == 128  # p <= 255/256: never
    assert export.int8_threshold(2.0, *softmax) == 128
    assert export.int8_threshold(0.0, *softmax) == -128  # always
    assert export.int8_threshold(-3.0, *softmax) == -128
    assert export.int8_threshold(0.1, 0.01, 5) == 15
    with pytest.raises(ValueError, match="NaN"):
        export.int8_threshold(float("nan"), *softmax)
    with pytest.raises(ValueError, match="scale"):
        export.int8_threshold(0.9, 0.0, 0)


def test_int8_threshold_matches_exact_rule():
    rng = np.random.default_rng(0)
    for _ in range(500):
        scale = float(np.float32(rng.uniform(1e-3, 0.05)))
        zero_point = int(rng.integers(-128, 128))
        t = float(rng.uniform(-0.5, 1.5))
        need = Fraction(t) / Fraction(scale) + zero_point
        if abs(need - round(need)) < Fraction(1, 10**6):
            continue  # float rounding may land either side of an exact integer
        q = export.int8_threshold(t, scale, zero_point)
        assert q == _exact_threshold(t, scale, zero_point)
        # The meaning: q fires for exactly the int8 values at or above t.
        for value in (q - 1, q):
            if -128 <= value <= 127:
                assert ((value - zero_point) * scale >= t) == (value >= q)


def test_decide_int8_hand_made():
    # 3 samples, 2 classes; thresholds 10, 20, 30, 40 for segments 1-4.
    q = np.full((5, 3, 2), -128, np.int8)
    q[0, 0] = [10, -5]  # sample 0 exits at segment 1 (10 >= 10), label 0
    q[0, 1] = [9, 0]  # sample 1: 9 < 10 ...
    q[1, 1] = [-3, 20]  # ... exits at segment 2, label 1
    q[4, 2] = [-1, 3]  # sample 2 never confident: segment 5, label 1
    q[3, 2] = [39, 0]
    labels, exits = export.decide_int8(q, [10, 20, 30, 40, -128])
    np.testing.assert_array_equal(exits, [0, 1, 4])
    np.testing.assert_array_equal(labels, [0, 1, 1])
    _, never = export.decide_int8(q, [128] * 4)
    np.testing.assert_array_equal(never, [4, 4, 4])


def test_quantize_rounds_half_away_from_zero_and_saturates():
    q = rt.quantize(np.array([0.5, 1.5, -0.5, -1.5, 0.26, 1000.0, -1000.0]), 1.0, 0)
    np.testing.assert_array_equal(q, [1, 2, -1, -2, 0, 127, -128])
    np.testing.assert_array_equal(rt.quantize(np.array([0.0, 0.25]), 0.25, -3), [-3, -2])


def test_resolve_thresholds():
    resolve = egt.cascade.resolve_thresholds
    assert resolve(0.9, 5) == (0.9,) * 4 + (2.0,)
    assert resolve([0.1, 0.2, 0.3, 0.4], 5) == (0.1, 0.2, 0.3, 0.4, 2.0)
    assert resolve([0.1, 0.2, 0.3, 0.4, 0.7], 5) == (0.1, 0.2, 0.3, 0.4, 2.0)
    assert resolve([0.5, float("inf")], 3) == (0.5, 2.0, 2.0)  # infinity: never exits
    with pytest.raises(ValueError, match="one per exit"):
        resolve([0.9, 0.9], 5)
    with pytest.raises(ValueError, match="NaN"):
        resolve(float("nan"), 3)


def test_export_rejects_bad_input(trained, tmp_path):
    model = trained[0]
    with pytest.raises(ValueError, match="representative_data"):
        export.export_cascade(model, tmp_path / "d", np.zeros((4, 16, 16, 2)))
    with pytest.raises(ValueError, match="NaN"):
        export.export_cascade(model, tmp_path / "d", np.full((4, 32, 32, 2), np.nan))
    with pytest.raises(TypeError, match="EarlyExitModel"):
        export.export_cascade(keras.Sequential([keras.layers.Dense(2)]), tmp_path / "d",
                              np.zeros((4, 32, 32, 2)))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="overwrite"):
        export.export_cascade(model, tmp_path / "busy", np.zeros((4, 32, 32, 2)))
    assert (tmp_path / "busy" / "keep.txt").read_text() == "mine"
    assert not (tmp_path / "d").exists()


def test_segments_chain_to_the_models_exits(trained):
    model, _, (x, _) = trained
    x = x[:8]
    expected = egt.metrics.exit_probabilities(model, x)
    inputs = export.segment_inputs(model, x, batch_size=3)
    h = x
    for k, segment in enumerate(export.build_segments(model)):
        np.testing.assert_allclose(np.asarray(h), inputs[k], rtol=1e-5, atol=1e-5)
        out = segment(h)
        probabilities, h = (out[0], out[1]) if k < 4 else (out, None)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(probabilities), expected[k],
                                   rtol=1e-5, atol=1e-6)
        if h is not None:
            h = keras.ops.convert_to_numpy(h)
    config = export.build_segments(model)[2].get_config()
    clone = export.Segment.from_config(config)
    assert clone.with_features and clone.head.num_classes == 3
    assert tuple(clone.stage.outputs[0].shape[1:]) == model.feature_shapes[2]


def test_import_keras_egt_does_not_import_tensorflow():
    code = ("import sys, keras_egt as egt; egt.export.load_cascade; "
            "print(sorted(m for m in ('tensorflow', 'tflite_micro', 'ai_edge_litert', "
            "'tensorflow_model_optimization') if m in sys.modules))")
    env = dict(os.environ, KERAS_BACKEND="jax")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.skipif(BACKEND == "tensorflow",
                    reason="exports a JAX/PyTorch model; runs in those passes")
def test_export_from_other_backend_runs_in_tensorflow_subprocess(trained, tmp_path):
    model, (x_train, _), (x_test, _) = trained
    out = tmp_path / "deploy"
    manifest = export.export_cascade(model, out, x_train[:16], threshold=THRESHOLD)
    assert sorted(os.listdir(out)) == sorted(
        [f"segment_{k}.tflite" for k in range(1, 6)]
        + ["manifest.json", "model_data.c", "model_data.h", "egt_manifest.h"])
    assert manifest == json.loads((out / "manifest.json").read_text())
    runner = export.load_cascade(out, runtime="tflm")
    labels, exits = runner.predict(x_test)
    float_labels, float_exits = egt.Cascade(model, threshold=THRESHOLD).predict(x_test)
    assert np.mean(labels == float_labels) >= 0.9
    assert np.mean(exits == float_exits) >= 0.9


# ------------------------------------------------------------------ TensorFlow


def _hand_segment_macs(widths, size, channels, classes):
    """The preset's segment MACs written out: 3x3 "same" conv at the block's input
    resolution, then a head on the (pooled) H x W x C map: 1x1 conv to h = max(8, C // 8),
    3x3 score conv, gating and average pooling (H*W*C each), dense from a 4x4 grid
    (or the whole map when smaller)."""
    macs, c_in = [], channels
    for k, c in enumerate(widths):
        block = size * size * 9 * c_in * c
        if k < len(widths) - 1:
            size //= 2
        hidden = max(8, c // 8)
        cells = min(size, 4) ** 2
        head = size * size * (c * hidden + 9 * hidden + 2 * c) + cells * c * classes
        macs.append(block + head)
        c_in = c
    return macs


def test_hand_segment_macs_is_the_cost_model():
    # 32x32x2 input, widths (4, 8, 8, 8, 8): segment 1 is conv 32*32*9*2*4 = 73,728 and a
    # head on 16x16x4: 16*16*(4*8 + 9*8 + 2*4) = 28,672, dense 16*4*3 = 192.
    assert _hand_segment_macs(TINY, 32, 2, 3)[0] == 73728 + 28672 + 192
    model = egt.EarlyExitCNN(3, (32, 32, 2), widths=TINY)
    assert egt.costs.segment_macs(model) == _hand_segment_macs(TINY, 32, 2, 3)


@pytest.mark.tensorflow_only
def test_manifest_is_complete(deployed):
    folder, manifest, model = deployed["dir"], deployed["manifest"], deployed["model"]
    assert sorted(os.listdir(folder)) == sorted(
        [f"segment_{k}.tflite" for k in range(1, 6)]
        + ["manifest.json", "model_data.c", "model_data.h", "egt_manifest.h"])
    with open(os.path.join(folder, "manifest.json"), encoding="utf-8") as f:
        assert json.load(f) == manifest
    assert manifest["format_version"] == egt.export.manifest.FORMAT_VERSION
    assert manifest["keras_egt_version"] == egt.__version__
    assert manifest["num_classes"] == 3 and manifest["input_shape"] == [32, 32, 2]
    assert manifest["criterion"] == "max_probability"
    assert manifest["thresholds"] == [THRESHOLD] * 4 + [2.0]
    segments = manifest["segments"]
    assert [s["index"] for s in segments] == [1, 2, 3, 4, 5]
    macs = _hand_segment_macs(TINY, 32, 2, 3)
    shape = [1, 32, 32, 2]
    for k, seg in enumerate(segments):
        data = _read(os.path.join(folder, seg["file"]))
        assert seg["file"] == f"segment_{k + 1}.tflite"
        assert seg["sha256"] == hashlib.sha256(data).hexdigest()
        assert seg["flash_bytes"] == len(data)
        assert seg["macs"] == macs[k]
        assert seg["arena_bytes"] >= seg["arena_recorded_bytes"] > 0
        assert seg["input"]["shape"] == shape and seg["input"]["dtype"] == "int8"
        probs = seg["probabilities"]
        assert probs["shape"] == [1, 3] and probs["dtype"] == "int8"
        info = convert.inspect_tflite(data)
        assert seg["ops"] == list(dict.fromkeys(info["ops"]))
        if k < 4:
            h = shape[1] // 2
            shape = [1, h, h, model.widths[k]]
            assert seg["features"]["shape"] == shape and seg["features"]["dtype"] == "int8"
            assert seg["threshold_int8"] == _exact_threshold(
                THRESHOLD, probs["scale"], probs["zero_point"])
            assert sorted([probs["output_index"], seg["features"]["output_index"]]) == [0, 1]
        else:
            assert seg["features"] is None and seg["threshold_int8"] is None
            assert probs["output_index"] == 0
    # The firmware arrays are the segment files byte for byte (spot check of segment 1).
    source = open(os.path.join(folder, "model_data.c"), encoding="ascii").read()
    first = _read(os.path.join(folder, "segment_1.tflite"))
    body = source.split("g_egt_segment_1[")[1].split("{", 1)[1].split("}", 1)[0]
    assert bytes(int(v, 16) for v in body.replace("\n", " ").split(",")) == first


@pytest.mark.tensorflow_only
def test_every_op_is_int8(deployed):
    for seg in deployed["manifest"]["segments"]:
        info = convert.inspect_tflite(_read(os.path.join(deployed["dir"], seg["file"])))
        assert info["num_subgraphs"] == 1
        for op in info["operators"]:
            assert op["name"] not in ("DEQUANTIZE", "QUANTIZE") and "CUSTOM" not in op["name"]
            for j in op["inputs"] + op["outputs"]:
                if j < 0:
                    continue
                t = info["tensors"][j]
                # int8 everywhere but int32 constants (biases, axes, shapes)
                assert t["dtype"] == "INT8" or (t["dtype"] == "INT32" and t["constant"]), (
                    seg["file"], op["name"], t["name"], t["dtype"])
        convert.check_full_int8(info)  # the export's own check agrees


@pytest.mark.tensorflow_only
def test_check_full_int8_rejects_a_float_model(deployed):
    segment = export.build_segments(deployed["model"])[4]
    data = np.ones((2, 2, 2, 8), np.float32)
    info = convert.inspect_tflite(convert.convert_segment(segment, data, int8=False))
    with pytest.raises(ValueError, match="FLOAT32"):
        convert.check_full_int8(info, "float model")


@pytest.mark.tensorflow_only
def test_handoff_needs_no_requantization(deployed):
    from ai_edge_litert.interpreter import Interpreter

    details = []
    for seg in deployed["manifest"]["segments"]:
        interpreter = Interpreter(model_path=os.path.join(deployed["dir"], seg["file"]))
        outputs = interpreter.get_output_details()
        features = [d for d in outputs if len(d["shape"]) == 4]
        details.append((interpreter.get_input_details()[0], features[0] if features else None))
    for k in range(4):
        out, nxt = details[k][1], details[k + 1][0]
        assert out["dtype"] == nxt["dtype"] == np.int8
        np.testing.assert_array_equal(out["shape"], nxt["shape"])
        # bit-equal float32 scale and equal zero point: the buffer is passed as is
        assert np.float32(out["quantization"][0]).tobytes() == np.float32(nxt["quantization"][0]).tobytes()
        assert out["quantization"][1] == nxt["quantization"][1]


@pytest.mark.tensorflow_only
def test_pin_range_clips_and_sets_both_ends():
    data = np.array([[0.0, 1.0, 5.0]], np.float32)
    np.testing.assert_array_equal(convert.pin_range(data, 0.0, 3.0), [[0.0, 1.0, 3.0]])
    data = np.array([[0.5, 1.0, 2.0, -0.1]], np.float32)
    np.testing.assert_array_equal(convert.pin_range(data, -1.0, 3.0), [[0.5, 1.0, 3.0, -1.0]])


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("scale, zero_point", [(0.0145, -128), (0.047, -77), (0.0131, 61)])
def test_calibration_ranges_reproduce_the_parameters(scale, zero_point):
    """The real converter, calibrated on `pin_range` data, gives a one-op model's input
    exactly the wanted (scale, zero point): what a segment's features carry."""
    import tensorflow as tf

    from keras_egt.export import exporter

    rng = np.random.default_rng(1)
    scale = float(np.float32(scale))  # as a segment's int8 features carry it
    ranges = convert.calibration_ranges(scale, zero_point)
    assert ranges

    @tf.function(input_signature=[tf.TensorSpec((1, 6), tf.float32)])
    def one_op(x):
        return tf.nn.relu(x)

    def converted_input_quantization(data):
        converter = tf.lite.TFLiteConverter.from_concrete_functions(
            [one_op.get_concrete_function()], one_op)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
        converter.representative_dataset = lambda: ([row] for row in data)
        interpreter = tf.lite.Interpreter(model_content=converter.convert())
        got_scale, got_zero_point = interpreter.get_input_details()[0]["quantization"]
        return float(np.float32(got_scale)), int(got_zero_point)

    wide = 300 * scale  # wider than int8 can hold on either side
    got = []
    # The exporter tries the first few candidates until the converter agrees: one of
    # them must give exactly the wanted parameters (measured: the unperturbed ends can
    # be one float32 step off in scale, their neighbours match).
    for lo, hi in ranges[: exporter._HANDOFF_ATTEMPTS]:
        data = convert.pin_range(rng.uniform(-wide, wide, size=(16, 1, 6)), lo, hi)
        got.append(converted_input_quantization(data))
        if got[-1] == (scale, zero_point):
            break
    assert got[-1] == (scale, zero_point), got
    assert all(z == zero_point and abs(s - scale) <= 4e-7 * scale for s, z in got)


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("runtime", ["tflm", "litert"])
def test_runtime_agrees_with_float_cascade(deployed, runtime):
    model, x, y = deployed["model"], deployed["x_test"], deployed["y_test"]
    runner = export.load_cascade(deployed["dir"], runtime=runtime)
    labels, exits = runner.predict(x)
    assert labels.dtype == exits.dtype == np.int64 and len(runner.last_seconds) == len(x)
    # The early-stopping loop makes the decisions of the exit rule on all segments.
    q = runner.run_segments(x)
    expected = export.decide_int8(q, runner.thresholds_int8)
    np.testing.assert_array_equal(labels, expected[0])
    np.testing.assert_array_equal(exits, expected[1])
    # Per segment, the int8 probabilities are within a few int8 steps of the float ones.
    p_float = egt.metrics.exit_probabilities(model, x)
    p_int8 = runner.probabilities(q)
    assert np.mean(np.abs(p_int8 - p_float)) <= 4 / 256
    assert np.all(np.mean(p_int8.argmax(-1) == p_float.argmax(-1), axis=1) >= 0.9)
    # The whole cascade agrees with the float Keras cascade.
    float_labels, float_exits = egt.Cascade(model, threshold=THRESHOLD).predict(x)
    assert len(set(float_exits.tolist())) >= 3  # the test exercises several exits
    assert np.mean(labels == float_labels) >= 0.9
    assert np.mean(exits == float_exits) >= 0.9
    assert abs(np.mean(labels == y) - np.mean(float_labels == y)) <= 0.05
    report = runner.report()
    for seg in deployed["manifest"]["segments"]:
        assert f"{seg['flash_bytes']:,}" in report and f"{seg['arena_bytes']:,}" in report


@pytest.mark.tensorflow_only
def test_runtimes_agree_with_each_other(deployed):
    x = deployed["x_test"]
    q_tflm = export.load_cascade(deployed["dir"], runtime="tflm").run_segments(x)
    q_litert = export.load_cascade(deployed["dir"], runtime="litert").run_segments(x)
    # Same int8 model; kernels may round differently by one step (LiteRT's optimized
    # kernels vs TFLM's reference ones), which later segments can carry on.
    diff = np.abs(q_tflm.astype(int) - q_litert.astype(int))
    assert diff[0].max() <= 1  # segment 1: same input, one rounding step at most
    assert diff.mean() <= 1
    assert np.mean(q_tflm.argmax(-1) == q_litert.argmax(-1)) >= 0.95


@pytest.mark.tensorflow_only
def test_tampered_or_mismatched_file_is_refused(deployed, tmp_path):
    folder = tmp_path / "deploy"
    shutil.copytree(deployed["dir"], folder)
    path = folder / "segment_3.tflite"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    for runtime in ("tflm", "litert"):
        with pytest.raises(ValueError, match="sha256.*refusing"):
            export.load_cascade(folder, runtime=runtime)
    # A valid segment file in the wrong place, with its hash in the manifest: caught by
    # its shapes and quantization.
    shutil.copy(os.path.join(deployed["dir"], "segment_2.tflite"), path)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["segments"][2]["sha256"] = manifest["segments"][1]["sha256"]
    manifest["segments"][2]["flash_bytes"] = manifest["segments"][1]["flash_bytes"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="edited after export"):
        export.load_cascade(folder, runtime="litert")
    # ... and with the manifest's digest recomputed, as a deliberate editor could.
    from keras_egt.export.manifest import seal_manifest

    (folder / "manifest.json").write_text(json.dumps(seal_manifest(manifest)))
    for name in ("egt_manifest.h", "model_data.c", "model_data.h"):  # sealed to the old one
        os.remove(folder / name)
    with pytest.raises(ValueError, match="does not belong"):
        export.load_cascade(folder, runtime="litert")
    os.remove(folder / "manifest.json")
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        export.load_cascade(folder)


@pytest.mark.tensorflow_only
def test_failed_export_leaves_nothing(deployed, tmp_path, monkeypatch):
    from keras_egt.export import convert

    calls = []
    real = convert.convert_segment

    def fail_on_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("forced failure")
        return real(*args, **kwargs)

    monkeypatch.setattr(convert, "convert_segment", fail_on_third)
    x = deployed["x_train"][:8]
    with pytest.raises(RuntimeError, match="forced failure"):
        export.export_cascade(deployed["model"], tmp_path / "new", x)
    assert os.listdir(tmp_path) == []  # no folder, no temporary left
    # Replacing an existing export: on failure the old one stays whole.
    old = tmp_path / "old"
    shutil.copytree(deployed["dir"], old)
    before = {name: _read(old / name) for name in os.listdir(old)}
    calls.clear()
    with pytest.raises(RuntimeError, match="forced failure"):
        export.export_cascade(deployed["model"], old, x, overwrite=True)
    assert os.listdir(tmp_path) == ["old"]
    assert {name: _read(old / name) for name in os.listdir(old)} == before


@pytest.mark.tensorflow_only
def test_handoff_mismatch_fails_clearly(deployed, tmp_path, monkeypatch):
    # Calibrating segment 2 on twice segment 1's feature range must give it another
    # input scale; the export has to refuse rather than ship that.
    real = convert.calibration_ranges
    monkeypatch.setattr(convert, "calibration_ranges",
                        lambda scale, zero_point: [(lo, 2 * hi) for lo, hi in real(scale, zero_point)][:1])
    with pytest.raises(ValueError, match="handoff mismatch: segment 1 .* segment 2's input"):
        export.export_cascade(deployed["model"], tmp_path / "d", deployed["x_train"][:8])
    assert os.listdir(tmp_path) == []


@pytest.mark.tensorflow_only
def test_qat_mirror_is_the_same_network(deployed):
    from keras_egt.export import qat

    model, x = deployed["model"], deployed["x_test"][:16]
    mirror, pairs = qat.build_mirror(model)
    expected = egt.metrics.exit_probabilities(model, x)
    np.testing.assert_allclose(np.stack([np.asarray(p) for p in mirror(x)]), expected, atol=1e-5)
    assert len(pairs) == 5 * 5  # conv, batch norm, reduce, score, classifier per exit
    kernel, bias = mirror.get_layer("h1_classifier").get_weights()
    mirror.get_layer("h1_classifier").set_weights([3.0 * kernel, bias])
    with pytest.raises(ValueError, match="mirror"):
        qat.check_mirror(model, mirror, x)


@pytest.mark.tensorflow_only
def test_cli_run_tflite_and_export_errors(deployed, tmp_path, capsys):
    from keras_egt.cli import main

    npz = tmp_path / "data.npz"
    np.savez(npz, x_train=deployed["x_train"], y_train=deployed["y_train"],
             x_test=deployed["x_test"], y_test=deployed["y_test"])
    model_path = tmp_path / "tiny.keras"
    deployed["model"].save(model_path)
    code = main(["run-tflite", deployed["dir"], "--data", str(npz), "--runtime", "litert",
                 "--model", str(model_path)])
    out = capsys.readouterr().out
    assert code == 0
    runner = export.load_cascade(deployed["dir"], runtime="litert")
    labels, _ = runner.predict(deployed["x_test"])
    assert f"accuracy {100 * np.mean(labels == deployed['y_test']):.2f}%" in out
    assert "agreement with int8" in out and "TFLM arena bytes" in out
    # An existing deploy folder is not overwritten without --overwrite.
    code = main(["export", str(model_path), deployed["dir"], "--data", str(npz)])
    assert code == 2 and "overwrite" in capsys.readouterr().err
    code = main(["export", str(model_path), str(tmp_path / "d"), "--data", str(npz),
                 "--threshold", "0.9", "0.9"])
    assert code == 2 and "--threshold" in capsys.readouterr().err


@pytest.mark.tensorflow_only
def test_cli_export_with_quantization_aware_training(deployed, tmp_path, capsys):
    from keras_egt.cli import main

    npz = tmp_path / "data.npz"
    np.savez(npz, x_train=deployed["x_train"][:64], y_train=deployed["y_train"][:64],
             x_test=deployed["x_test"], y_test=deployed["y_test"])
    model_path = tmp_path / "tiny.keras"
    deployed["model"].save(model_path)
    out = tmp_path / "qat"
    code = main(["export", str(model_path), str(out), "--data", str(npz), "--qat",
                 "--qat-epochs", "1", "--num-calibration", "16", "--threshold", str(THRESHOLD)])
    assert code == 0, capsys.readouterr().err
    manifest = export.read_manifest(out)
    assert manifest["quantization"] == "qat" and manifest["qat_epochs"] == 1
    assert manifest["num_calibration_samples"] == 16
    assert "TFLM arena bytes" in capsys.readouterr().out
    runner = export.load_cascade(out, runtime="tflm")
    labels, _ = runner.predict(deployed["x_test"])
    # One epoch of QAT fine-tuning keeps the float model's decisions.
    float_labels, _ = egt.Cascade(deployed["model"], threshold=THRESHOLD).predict(
        deployed["x_test"])
    assert np.mean(labels == float_labels) >= 0.9


@pytest.mark.tensorflow_only
def test_worker_reports_errors_with_their_type(tmp_path):
    from keras_egt.export import _worker

    job = {"function": "export_cascade", "model": str(tmp_path / "missing.keras"),
           "arrays": {}, "kwargs": {}, "result": str(tmp_path / "result.json")}
    (tmp_path / "job.json").write_text(json.dumps(job))
    assert _worker.main(str(tmp_path / "job.json")) == 1
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["error_type"] == "ValueError" and "missing.keras" in result["error"]


@pytest.mark.tensorflow_only
def test_integer_images_are_refused_with_the_loaders_fix(deployed, tmp_path):
    # One rule for images (checks.check_image_dtype): uint8 levels are not rescaled
    # silently anywhere; the fix the message names is what the loaders do.
    levels = np.clip(np.round(deployed["x_test"][:6] * 255), 0, 255).astype(np.uint8)
    fix = r'astype\("float32"\) / 255\. Received: (x|representative_data)\.dtype=uint8'
    with pytest.raises(ValueError, match=fix):
        export.export_cascade(deployed["model"], tmp_path / "d", levels)
    assert not os.path.exists(tmp_path / "d")
    runner = export.load_cascade(deployed["dir"], runtime="tflm")
    with pytest.raises(ValueError, match=fix):
        runner.predict(levels)
    scaled = levels.astype("float32") / 255
    for a, b in zip(runner.predict(scaled), runner.predict(runner.quantize_input(scaled))):
        np.testing.assert_array_equal(a, b)  # int8 input: already quantized, same answer
