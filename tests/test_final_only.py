"""The int8 model without early exit, and TFLM timing of the cascade against it."""

import os

import keras
import numpy as np
import pytest

import keras_egt as egt
from keras_egt import export
from keras_egt.export import runtime as rt
from kit import blob_task

pytestmark = pytest.mark.tensorflow_only


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    x, y = blob_task(n=160)
    keras.utils.set_random_seed(1234)
    model = egt.EarlyExitCNN(3, (32, 32, 2), widths=(4, 8, 8, 8, 8))
    model.compile("adam", metrics=["accuracy"])
    model.fit(x[:128], y[:128], epochs=3, batch_size=32, verbose=0)
    out = tmp_path_factory.mktemp("final_only")
    deploy = str(out / "deploy")
    export.export_cascade(model, deploy, x[:32], threshold=0.6)
    info = export.export_final_only(model, x[:32], str(out / "final_only.tflite"))
    return model, x[128:], deploy, info


def test_final_only_file_is_the_float_final_exit_in_int8(exported):
    model, x, _, info = exported
    assert os.path.getsize(info["path"]) == info["flash_bytes"]
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=info["path"])
    interpreter.allocate_tensors()
    i, o = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    scale, zero = o["quantization"]
    got = []
    for row in x:
        interpreter.set_tensor(i["index"], rt.quantize(row[None], info["scale"], info["zero_point"]))
        interpreter.invoke()
        got.append(rt.dequantize(interpreter.get_tensor(o["index"])[0], scale, zero))
    expected = egt.metrics.exit_probabilities(model, x)[-1]
    # int8: probabilities in steps of 1/256; errors through five layers stay a few steps.
    assert np.mean(np.abs(np.asarray(got) - expected)) < 0.03


def test_tflm_timing_runs_both_paths_on_the_same_samples(exported):
    _, x, deploy, info = exported
    timing = export.tflm_time_per_sample(deploy, info, x, samples=12, warmup=1)
    assert timing["samples"] == 12
    assert timing["ms_with_early_exit"] > 0 and timing["ms_without_early_exit"] > 0
    assert timing["speedup"] == pytest.approx(
        timing["ms_without_early_exit"] / timing["ms_with_early_exit"])
    # The early-exit path is the deployed cascade itself.
    labels, exits = export.load_cascade(deploy, runtime="tflm").predict(x[:12])
    assert timing["labels_with_early_exit"] == labels.tolist()
    assert timing["exit_shares"] == egt.cascade.exit_shares(exits, 5)
    # The other path is the final-only model, on TFLM as on LiteRT (one rounding step
    # between their kernels can flip a near-tie, hence agreement rather than identity).
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=info["path"])
    interpreter.allocate_tensors()
    i, o = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    litert = []
    for row in x[:12]:
        interpreter.set_tensor(i["index"], rt.quantize(row[None], info["scale"], info["zero_point"]))
        interpreter.invoke()
        litert.append(int(np.argmax(interpreter.get_tensor(o["index"])[0])))
    assert np.mean(np.asarray(litert) == timing["labels_without_early_exit"]) >= 11 / 12


def test_int8_thresholds_are_the_exports_own(exported):
    model, x, deploy, info = exported
    manifest = export.read_manifest(deploy)
    exported_int8 = [s["threshold_int8"] for s in manifest["segments"]]
    assert export.load_cascade(deploy, threshold=0.6).thresholds_int8 == exported_int8
    strict = export.load_cascade(deploy, threshold=2.0).thresholds_int8
    assert strict[:-1] == [128] * 4 and strict[-1] is None
    # Thresholds of another criterion mean nothing to the int8 test: refused.
    entropy = egt.CalibratedThresholds([0.5] * 5)
    entropy.criterion = "entropy"
    with pytest.raises(ValueError, match="calibrated for criterion 'entropy'"):
        export.load_cascade(deploy, threshold=entropy)
    timing = export.tflm_time_per_sample(deploy, info, x, samples=6, warmup=0, threshold=2.0)
    assert timing["exit_shares"] == [0.0] * 4 + [1.0]
