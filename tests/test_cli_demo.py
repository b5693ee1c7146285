import json
import os

import pytest

from keras_egt.cli import main


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


@pytest.mark.tensorflow_only
@pytest.mark.slow
def test_demo_end_to_end_on_tiny_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    out = tmp_path / "demo"
    code = main([
        "demo", "--output", str(out), "--epochs", "1", "--num-train", "90", "--num-test", "45",
        "--model", "c4p s8p | c8p | c8", "--calibration-users", "4",
    ])
    assert code == 0
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
