import contextlib
import io
import json
import os
import re

import keras
import numpy as np
import pytest

from keras_egt.cli import main

TINY = ["--epochs", "1", "--num-train", "90", "--num-test", "45",
        "--model", "c4p s8p | c8p | c8", "--calibration-users", "4"]


def summary_preset(out):
    return json.loads((out / "summary.json").read_text())["preset"]


def test_demo_rejects_bad_options(capsys):
    assert main(["demo", "--widths", "1,2"]) == 2
    assert "--widths" in capsys.readouterr().err
    assert main(["demo", "--model", "c8p q16"]) == 2
    assert "--model: Unknown block 'q16'" in capsys.readouterr().err
    assert main(["demo", "--lambda", "0"]) == 2
    assert main(["demo", "--calibration-users", "1"]) == 2
    assert "--calibration-users" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    """One tiny demo run: its folder, stdout, progress bars and attention-grid labels."""
    from keras_egt import plots

    tmp = tmp_path_factory.mktemp("demo")
    out = tmp / "demo"
    bars, grids = [], {}
    save, progbar = plots._save, keras.utils.Progbar

    class Recorded(progbar):
        def __init__(self, target, *args, **kwargs):
            super().__init__(target, *args, **kwargs)
            bars.append((target, kwargs.get("unit_name", "step")))

    def capture(fig, path):
        if os.path.basename(path).startswith("attention_"):
            grids[os.path.basename(path)] = [(ax.get_ylabel(), ax.get_title()) for ax in fig.axes]
        return save(fig, path)

    stdout = io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KERAS_HOME", str(tmp / "keras_home"))
        patch.setattr(plots, "_save", capture)
        patch.setattr(keras.utils, "Progbar", Recorded)
        with contextlib.redirect_stdout(stdout):
            code = main(["demo", "--output", str(out)] + TINY)
        from keras_egt.datasets import radar_gestures

        _, (x_test, y_test) = radar_gestures.load_data(num_train=90, num_test=45)
    return {"code": code, "out": out, "stdout": stdout.getvalue(), "bars": bars,
            "grids": grids, "x_test": x_test, "y_test": y_test}


@pytest.mark.tensorflow_only
@pytest.mark.slow
def test_demo_end_to_end_on_tiny_settings(tiny_demo):
    out = tiny_demo["out"]
    assert tiny_demo["code"] == 0
    report = (out / "report.md").read_text()
    assert "Table I" in report and "Table II" in report and "int8 TFLM cascade" in report
    # 4 held-out users cannot certify a 1-point promise: said so, never exits early.
    assert "NOT certified" in report and "held-out users" in report
    for name in ["attention_egt", "attention_baseline", "consistency", "exits", "speedup"]:
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"({name}.png)" in report
    manifest = json.loads((out / "deploy" / "manifest.json").read_text())
    assert len(manifest["segments"]) == 3
    assert summary_preset(out) == "c4p s8p | c8p | c8"
    assert os.path.exists(out / "egt.keras") and os.path.exists(out / "baseline.keras")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["flash_bytes"] == sum(s["flash_bytes"] for s in manifest["segments"])
    assert summary["arena_bytes"] == max(s["arena_bytes"] for s in manifest["segments"])
    assert set(summary["cascades"]) == {"threshold_0.9", "calibrated"}
    for entry in summary["cascades"].values():
        for key in ("accuracy", "final_exit_accuracy", "tflm_accuracy"):
            assert 0 <= entry[key] <= 1
        for key in ("mac_speedup", "float_time_speedup", "tflm_time_speedup"):
            assert entry[key] > 0
        # The verdict is stated either way.
        assert ("does not pay off" in report) == any(
            entry[k] <= 1 for entry in summary["cascades"].values()
            for k in ("mac_speedup", "float_time_speedup", "tflm_time_speedup"))
    assert "Table II on the int8 TFLM interpreter" in report
    calibrated = summary["cascades"]["calibrated"]
    assert f"labels {100 * calibrated['float_label_agreement']:.2f}%" in report
    # The report names the published deploy folder, not the staging one it was run in.
    assert ".tmp-" not in report and str(out / "deploy") in report


@pytest.mark.tensorflow_only
@pytest.mark.slow
def test_demo_attention_grids_carry_true_labels_and_class_names(tiny_demo):
    from keras_egt.datasets.radar_gestures import CLASS_NAMES

    assert set(tiny_demo["grids"]) == {"attention_egt.png", "attention_baseline.png"}
    for labels in tiny_demo["grids"].values():
        rows = [ylabel for ylabel, _ in labels if ylabel]
        assert len(rows) == 8
        for i, (row, label) in enumerate(zip(rows, tiny_demo["y_test"][:8])):
            assert row == f"#{i} true: {CLASS_NAMES[label]}"
        # Every prediction is titled with a class name, not an index.
        predicted = [re.search(r"pred (\w+)", title) for _, title in labels]
        assert all(m.group(1) in CLASS_NAMES for m in predicted if m)
        assert sum(m is not None for m in predicted) == 8 * 3


@pytest.mark.tensorflow_only
@pytest.mark.slow
def test_demo_gives_int8_accuracy_without_early_exit(tiny_demo):
    from keras_egt import export
    from keras_egt.export import convert

    out, x_test, y_test = tiny_demo["out"], tiny_demo["x_test"], tiny_demo["y_test"]
    summary = json.loads((out / "summary.json").read_text())
    # Reference: the library's own final-only path on TFLM, over the whole test set.
    path = str(out / "final_only.tflite")
    spec = convert.inspect_tflite(open(path, "rb").read())["inputs"][0]
    info = {"path": path, "arena_bytes": summary["final_only_arena_bytes"],
            "scale": float(spec["scale"][0]), "zero_point": int(spec["zero_point"][0])}
    timing = export.tflm_time_per_sample(str(out / "deploy"), info, x_test,
                                         samples=len(x_test), warmup=0)
    expected = float(np.mean(np.asarray(timing["labels_without_early_exit"]) == y_test))
    report = (out / "report.md").read_text()
    for entry in summary["cascades"].values():
        assert entry["tflm_final_exit_accuracy"] == pytest.approx(expected)
    assert f"int8 without early exit {100 * expected:.2f}%" in report
    assert "TFLM acc. without EE (%)" in report
    assert re.search(rf"\| calibrated \|.*\| {100 * expected:.2f} \|", report)


@pytest.mark.tensorflow_only
@pytest.mark.slow
def test_demo_records_the_calibration_promise(tiny_demo):
    out = tiny_demo["out"]
    summary = json.loads((out / "summary.json").read_text())
    report = (out / "report.md").read_text()
    assert summary["cascades"]["threshold_0.9"]["calibration"] is None
    promise = summary["cascades"]["calibrated"]["calibration"]
    # The demo's settings: 1 point at confidence 0.9, over 4 users of 3 samples.
    assert promise["risk"] == "accuracy_drop" and promise["epsilon"] == 0.01
    assert promise["confidence"] == 0.9 and promise["delta"] == pytest.approx(0.1)
    assert (promise["n"], promise["groups"], promise["num_samples"]) == (4, 4, 12)
    assert promise["certified"] is False
    # One epoch on 75 samples leaves the final exit at chance: said so, not a failure.
    assert "at chance" in promise["reason"]
    assert promise["statement"] in report
    assert "calibrated on 12 samples of 4 held-out users" in report


@pytest.mark.tensorflow_only
@pytest.mark.slow
def test_demo_announces_every_phase_with_progress(tiny_demo):
    steps = re.findall(r"^step (\d+)/(\d+): ", tiny_demo["stdout"], re.MULTILINE)
    assert [int(k) for k, _ in steps] == list(range(1, 14))
    assert {int(n) for _, n in steps} == {13}
    samples = [target for target, unit in tiny_demo["bars"] if unit == "sample"]
    # Three float evaluations (the batched pass, then batch-1 timing), then TFLM: the
    # final-only model, and two cascades (their labels, then the interleaved timing),
    # each over the 45 test samples.
    assert samples == [45] * 11
    assert (3, "segment") in tiny_demo["bars"]
