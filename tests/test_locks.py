"""One writer per deploy folder and per tuner directory (issue 24, keras_egt/locks.py)."""

import os
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_egt as egt
from keras_egt import locks
from kit import BACKEND, blob_task

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def holder():
    """Starts a process holding `writer_lock(target)`; yields start(target) -> Popen."""
    started = []

    def start(target):
        code = ("import sys\nfrom keras_egt.locks import writer_lock\n"
                f"with writer_lock({str(target)!r}):\n"
                "    print('held', flush=True)\n    sys.stdin.read()\n")
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True, env=env)
        started.append(process)
        assert process.stdout.readline().strip() == "held"
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()


def _refusal(error, target, process):
    message = str(error.value)
    assert "\n" not in message
    assert repr(str(target)) in message and f"pid {process.pid}" in message, message


def test_a_second_writer_is_refused_in_one_line(holder, tmp_path):
    target = tmp_path / "deploy"
    process = holder(target)
    with pytest.raises(locks.LockedError, match="another process .* is writing this deploy "
                                                "folder now; wait for it to finish") as error:
        with locks.writer_lock(target, "deploy folder"):
            pass
    _refusal(error, target, process)


def test_the_lock_is_released_when_its_holder_dies(holder, tmp_path):
    target = tmp_path / "runs"
    process = holder(target)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    with locks.writer_lock(target) as path:  # no stale lock after a SIGKILL
        assert path == str(tmp_path / ".runs.lock")
    with locks.writer_lock(target):  # and it is released on leaving the block
        pass
    assert os.listdir(tmp_path) == []  # a finished writer leaves no lock file behind


def test_a_second_grid_search_on_one_directory_is_refused(holder, tmp_path):
    x, y = blob_task(n=8, size=32)
    hypermodel = egt.tuning.EGTHyperModel(num_classes=3, input_shape=(32, 32, 2),
                                          widths=(2, 2, 2, 2, 2), lambdas=[0.0])
    tuner = egt.tuning.GridSearch(hypermodel, objective=egt.tuning.objective("score"),
                                  directory=str(tmp_path), project_name="lambda")
    process = holder(tuner.project_dir)
    with pytest.raises(locks.LockedError, match="is writing this tuner directory") as error:
        tuner.search(x, y, validation_split=0.5, epochs=1, verbose=0)
    _refusal(error, tuner.project_dir, process)
    assert not tuner.oracle.trials  # refused before any trial ran


@pytest.mark.tensorflow_only
def test_a_second_export_into_one_folder_is_refused(holder, tmp_path):
    if BACKEND != "tensorflow":
        pytest.skip("TensorFlow-only")
    x, _ = blob_task(n=8, size=32)
    keras.utils.set_random_seed(0)
    model = egt.EarlyExitCNN(3, (32, 32, 2), widths=(4, 4, 8, 8, 8))
    out = tmp_path / "deploy"
    process = holder(out)
    with pytest.raises(locks.LockedError, match="is writing this deploy folder") as error:
        egt.export.export_cascade(model, out, x[:4])
    _refusal(error, out, process)
    assert sorted(os.listdir(tmp_path)) == [".deploy.lock"]  # no staging folder left


def _tiny_hypermodel():
    return egt.tuning.EGTHyperModel(num_classes=3, input_shape=(32, 32, 2),
                                    widths=(2, 2, 2, 2, 2), lambdas=[0.0, 0.1])


@pytest.mark.parametrize("tuner_class, options", [
    ("RandomSearch", {"max_trials": 1}),
    ("BayesianOptimization", {"max_trials": 1}),
    ("Hyperband", {"max_epochs": 2, "hyperband_iterations": 1}),
])
def test_every_tuner_of_the_package_refuses_a_second_search(holder, tmp_path, tuner_class,
                                                             options):
    x, y = blob_task(n=8, size=32)
    tuner = getattr(egt.tuning, tuner_class)(
        _tiny_hypermodel(), objective=egt.tuning.objective("score"), directory=str(tmp_path),
        project_name="lambda", **options)
    process = holder(tuner.project_dir)
    with pytest.raises(locks.LockedError, match="is writing this tuner directory") as error:
        tuner.search(x, y, validation_split=0.5, epochs=1, verbose=0)
    _refusal(error, tuner.project_dir, process)
    assert not tuner.oracle.trials  # refused before any trial ran


def test_overwrite_cannot_delete_a_running_search(holder, tmp_path):
    project = tmp_path / "lambda"
    (project / "trial_00").mkdir(parents=True)
    (project / "trial_00" / "trial.json").write_text("{}")
    process = holder(project)
    with pytest.raises(locks.LockedError, match="is writing this tuner directory") as error:
        egt.tuning.RandomSearch(_tiny_hypermodel(), objective=egt.tuning.objective("score"),
                                max_trials=1, directory=str(tmp_path), project_name="lambda",
                                overwrite=True)
    _refusal(error, project, process)
    assert (project / "trial_00" / "trial.json").read_text() == "{}"  # nothing removed


@pytest.mark.parametrize("tuner", ["random", "hyperband"])
def test_a_second_tune_command_is_refused_in_one_line(holder, tmp_path, capsys, tuner):
    from keras_egt import cli

    x, y = blob_task(n=12, size=32)
    data = tmp_path / "tiny.npz"
    np.savez(data, x_train=x, y_train=y, x_test=x[:6], y_test=y[:6])
    project = tmp_path / "runs" / "lambda"
    process = holder(project)
    code = cli.main(["tune", "--tuner", tuner, "--data", str(data), "--widths", "2,2,2,2,2",
                     "--lambdas", "0,0.1", "--max-trials", "1", "--epochs", "2", "--verbose",
                     "0", "--directory", str(tmp_path / "runs"), "--output-dir",
                     str(tmp_path / "tune")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "is writing this tuner directory" in err and f"pid {process.pid}" in err, err
    assert not list(project.glob("trial_*"))  # refused before any trial ran
    assert not (tmp_path / "tune").exists()


def test_a_distributed_search_shares_its_directory(holder, tmp_path, monkeypatch):
    # The chief's oracle hands out each trial once; its workers use the same folder.
    process = holder(tmp_path / "lambda")
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    monkeypatch.setenv("KERASTUNER_ORACLE_PORT", "8000")
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "tuner0")
    with egt.tuning._search_lock(str(tmp_path / "lambda")) as path:
        assert path is None
    assert process.poll() is None
