"""`keras-egt train`, `evaluate` and `explain`, end to end on tiny data."""

import argparse
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from keras_egt import cli
from kit import blob_task

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    x, y = blob_task(n=24, size=32)
    x_test, y_test = blob_task(n=12, size=32, seed=1)
    data = folder / "tiny.npz"
    np.savez(data, x_train=x, y_train=y, x_test=x_test, y_test=y_test)
    model = folder / "model.keras"
    code = cli.main(["train", "--data", str(data), "--widths", "4,8,8,8,8", "--lambda", "0.3",
                     "--epochs", "1", "--batch-size", "12", "--no-validation", "--verbose", "0",
                     "--output", str(model)])
    assert code == 0
    return folder, data, model


def test_train_writes_a_loadable_model(trained):
    import keras

    folder, _, model = trained
    loaded = keras.saving.load_model(model)
    assert loaded.widths == (4, 8, 8, 8, 8) and loaded.consistency_weight == 0.3
    assert loaded.num_classes == 3
    assert not [f for f in os.listdir(folder) if f.startswith(".tmp-")]


def test_evaluate_prints_tables_and_writes_json(trained, capsys):
    folder, data, model = trained
    report = folder / "report.json"
    code = cli.main(["evaluate", str(model), "--data", str(data), "--threshold", "0.5",
                     "--timing-samples", "2", "--json", str(report)])
    assert code == 0
    out = capsys.readouterr().out
    assert "| Model | Exit 1 | Exit 2 | Exit 3 | Exit 4 | Avg | Overall Acc. (%)" in out
    assert "| With Early Exit |" in out
    data = json.loads(report.read_text())
    assert data["num_samples"] == 12 and data["thresholds"][:4] == [0.5] * 4
    assert data["timing"]["samples"] == 2


@pytest.mark.parametrize("labelled", [True, False])
def test_evaluate_calibrates_on_held_out_data(trained, capsys, labelled):
    folder, data, model = trained
    x_cal, y_cal = blob_task(n=40, size=32, seed=2)
    arrays = {"x": x_cal, "groups": np.arange(40) % 10}
    if labelled:
        arrays["y"] = y_cal
    cal = folder / f"cal_{labelled}.npz"
    np.savez(cal, **arrays)
    report = folder / f"calibrated_{labelled}.json"
    code = cli.main(["evaluate", str(model), "--data", str(data), "--calibrate", "0.5",
                     "--confidence", "0.8", "--calibration-data", str(cal), "--no-timing",
                     "--json", str(report)])
    assert code == 0
    out = capsys.readouterr().out
    assert "Calibrated on 40 samples of" in out and "(10 groups)" in out
    assert "Measured on the test split:" in out and "-point drop" in out
    written = json.loads(report.read_text())
    calibration = written["calibration"]
    assert calibration["n"] == 10 and calibration["groups"] == 10
    assert calibration["risk"] == ("accuracy_drop" if labelled else "disagreement")
    assert written["thresholds"] == calibration["thresholds"]


def test_explain_writes_a_png(trained, drawn):
    import keras
    from keras import ops

    folder, data, model = trained
    out = folder / "attention.png"
    code = cli.main(["explain", str(model), "--data", str(data), "--num-samples", "3",
                     "--start", "2", "--output", str(out)])
    assert code == 0
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    # Drawn: one row per test sample 2..4, the input then every exit's map over it.
    loaded = keras.saving.load_model(model)
    x = np.load(data)["x_test"][2:5]
    maps = [ops.convert_to_numpy(m)[..., 0] for m in loaded.attention_maps(x)]
    (figure,) = drawn
    axes = np.array(figure.axes).reshape(3, loaded.num_exits + 1)
    for i in range(3):
        np.testing.assert_allclose(axes[i, 0].images[0].get_array(), x[i, :, :, 0])
        for k, m in enumerate(maps):
            np.testing.assert_allclose(np.asarray(axes[i, k + 1].images[1].get_array()),
                                       m[i] / m[i].max(), atol=1e-5)


def test_module_entry_point_in_a_subprocess(trained):
    folder, data, model = trained
    out = folder / "sub.png"
    env = dict(os.environ, MPLBACKEND="Agg")
    result = subprocess.run(
        [sys.executable, "-m", "keras_egt", "explain", str(model), "--data", str(data),
         "--split", "train", "--num-samples", "2", "--output", str(out)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert out.read_bytes()[:8] == PNG_SIGNATURE


@pytest.mark.parametrize(
    "argv, message",
    [
        (["evaluate", "{folder}/missing.keras", "--data", "{data}"], "No such model file"),
        (["evaluate", "{model}", "--data", "{folder}/missing.npz"], "No such data file"),
        (["explain", "{model}", "--data", "{data}", "--output", "x.jpg"], ".png"),
        (["evaluate", "{data}", "--data", "{data}"], ".keras"),
        (["train", "--data", "{data}", "--widths", "4,8", "--output", "{folder}/m.keras"],
         "--widths"),
        (["evaluate", "{model}", "--data", "{data}", "--threshold", "0.9", "0.8"], "one per exit"),
        (["evaluate", "{model}", "--data", "{data}", "--calibrate", "0.01"], "--calibration-data"),
        (["evaluate", "{model}", "--data", "{data}", "--calibrate", "1.5",
          "--calibration-data", "{data}"], "no array 'x'"),
    ],
)
def test_bad_input_exits_2_with_one_line(trained, capsys, argv, message):
    folder, data, model = trained
    argv = [a.format(folder=folder, data=data, model=model) for a in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and err.startswith("keras-egt ")


def test_missing_optional_package_exits_2_with_one_line(trained, capsys, monkeypatch):
    from keras_egt.cli import evaluate
    from keras_egt.export import _deps

    def evaluate_without_a_package(args):
        return _deps.require("keras_egt_no_such_package", "this test")

    monkeypatch.setattr(evaluate, "evaluate_command", evaluate_without_a_package)
    folder, data, model = trained
    assert cli.main(["evaluate", str(model), "--data", str(data)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install keras-egt[deploy]" in err[0]


def _commands(parser, prefix=()):
    """Every (sub)command's argv prefix and parser, e.g. ("data", "show")."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield prefix + (name,), sub
                yield from _commands(sub, prefix + (name,))


COMMANDS = ["train", "evaluate", "explain", "demo", "tune", "export", "run-tflite", "data",
            "firmware"]


def test_every_option_has_help():
    found = dict(_commands(cli.build_parser()))
    assert {name for (name, *_) in found} == set(COMMANDS)
    for argv, sub in found.items():
        assert sub.description, argv
        for action in sub._actions:
            if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                assert action.help, f"{' '.join(argv)} {action.dest} has no help"


@pytest.mark.parametrize("argv", [c for c, _ in _commands(cli.build_parser())], ids=" ".join)
def test_help_of_every_command(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(list(argv) + ["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ") and " ".join(argv) in out.splitlines()[0]
