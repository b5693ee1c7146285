"""Issue 24: the CLI never destroys what is not its own, and fails in one line (exit 2).

Output paths are checked before any work, `--overwrite` only replaces an earlier
deploy folder (or fills an empty one), and every OSError or Ctrl-C ends in one line
naming the file and the fix, never a traceback.
"""

import contextlib
import errno
import os
import stat
import zipfile

import keras
import numpy as np
import pytest

from keras_egt import cli
from keras_egt.export import exporter
from kit import SMALL, blob_task, tiny_cnn

BACKEND = keras.backend.backend()


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A user's project folder: a tiny saved model, its data and a note."""
    folder = tmp_path_factory.mktemp("project")
    x, y = blob_task(n=12, size=32)
    np.savez(folder / "tiny.npz", x_train=x, y_train=y, x_test=x[:6], y_test=y[:6])
    model = tiny_cnn(widths=SMALL)
    model(x[:1])
    model.save(folder / "tiny.keras")
    (folder / "notes.txt").write_text("mine")
    return folder


def _snapshot(folder):
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))
            if (folder / name).is_file()}


def _one_line_error(capsys, code, expected=2):
    err = capsys.readouterr().err.strip()
    assert code == expected, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# --- a. --overwrite replaces only an earlier deploy folder ---------------------------


def test_overwrite_refuses_the_current_folder(project, capsys, monkeypatch):
    monkeypatch.chdir(project)
    before = _snapshot(project)
    code = cli.main(["export", "tiny.keras", ".", "--data", "tiny.npz", "--overwrite"])
    err = _one_line_error(capsys, code)
    assert "current folder" in err and "pass overwrite" not in err
    assert _snapshot(project) == before


def test_overwrite_refuses_an_ancestor_and_the_folder_of_the_input(project, capsys,
                                                                   monkeypatch):
    (project / "sub").mkdir(exist_ok=True)
    monkeypatch.chdir(project / "sub")
    before = _snapshot(project)
    code = cli.main(["export", "../tiny.keras", "..", "--data", "../tiny.npz", "--overwrite"])
    assert "current folder" in _one_line_error(capsys, code)
    monkeypatch.chdir(project.parent)
    code = cli.main(["export", str(project / "tiny.keras"), str(project),
                     "--data", str(project / "tiny.npz"), "--overwrite"])
    err = _one_line_error(capsys, code)
    assert "holds the input" in err and "pass overwrite" not in err
    assert _snapshot(project) == before


def test_overwrite_refuses_a_folder_that_is_no_deploy_folder(project, tmp_path, capsys):
    other = tmp_path / "stuff"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    (other / "manifest.json").write_text('{"not": "ours"}')
    for extra in ([], ["--overwrite"]):
        code = cli.main(["export", str(project / "tiny.keras"), str(other),
                         "--data", str(project / "tiny.npz")] + extra)
        err = _one_line_error(capsys, code)
        assert "not a deploy folder" in err and "pass overwrite" not in err
    assert (other / "keep.txt").read_text() == "mine"


@pytest.fixture(scope="module")
def deploy_model():
    if BACKEND != "tensorflow":
        pytest.skip("TensorFlow-only fixture")
    x, _ = blob_task(n=16, size=32)
    model = tiny_cnn(widths=SMALL)
    model(x[:1])
    return model, x


@pytest.mark.tensorflow_only
def test_export_fills_an_empty_folder_and_replaces_a_symlink_cleanly(deploy_model, tmp_path):
    model, x = deploy_model
    empty = tmp_path / "empty"
    empty.mkdir()
    os.chmod(empty, 0o750)
    inode = os.stat(empty).st_ino
    exporter.export_cascade(model, empty, x)
    assert os.stat(empty).st_ino == inode
    assert stat.S_IMODE(os.stat(empty).st_mode) == 0o750
    assert "manifest.json" in os.listdir(empty)
    # A symlink to that (now earlier) deploy folder: replaced, no `.link.old-*` left.
    os.symlink(empty, tmp_path / "link")
    exporter.export_cascade(model, tmp_path / "link", x, overwrite=True)
    assert not [n for n in os.listdir(tmp_path) if ".old-" in n or ".tmp-" in n]
    assert os.path.islink(tmp_path / "link") or (tmp_path / "link").is_dir()
    assert "manifest.json" in os.listdir(tmp_path / "link")


def test_staging_name_fits_name_max_for_a_long_folder_name(tmp_path):
    out_dir = str(tmp_path / ("a" * 250))
    staging = exporter._staging_folder(out_dir)
    try:
        assert os.path.isdir(staging)
        assert len(os.path.basename(staging).encode()) <= 255
    finally:
        os.rmdir(staging)


# --- d. one error rule: one line, exit 2 (130 for Ctrl-C) --------------------------


def test_os_errors_name_the_file_and_the_fix():
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "out/model.keras")
    message = cli.describe_os_error(full)
    assert message.startswith("out/model.keras: ") and "disk space" in message
    assert "read-only" in cli.describe_os_error(OSError(errno.EROFS, "Read-only", "/ro/x"))
    assert "\n" not in cli.describe_os_error(OSError("two\nlines"))


def test_an_os_error_during_work_is_one_line(project, tmp_path, capsys):
    # The parent of the output is a file: the save fails with ENOTDIR after training.
    (tmp_path / "afile").write_text("x")
    code = cli.main(["train", "--data", str(project / "tiny.npz"), "--widths", "4,8,8,8,8",
                     "--epochs", "1", "--batch-size", "12", "--no-validation", "--verbose",
                     "0", "--output", str(tmp_path / "afile" / "m.keras")])
    assert "afile" in _one_line_error(capsys, code)


def test_ctrl_c_is_one_line_and_exit_130(project, capsys, monkeypatch):
    from keras_egt.cli import train

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "load_dataset", interrupted)
    code = cli.main(["train", "--data", str(project / "tiny.npz"), "--output",
                     str(project / "never.keras")])
    assert "interrupted" in _one_line_error(capsys, code, expected=130)
    assert not (project / "never.keras").exists()


def test_special_files_are_not_regular_files(tmp_path, capsys):
    fifo = tmp_path / "model.keras"
    os.mkfifo(fifo)
    for path in (str(fifo), os.devnull):
        code = cli.main(["evaluate", path, "--no-timing"])
        err = _one_line_error(capsys, code)
        assert "not a regular file" in err and "No such" not in err


def test_a_lambda_model_names_safe_mode(tmp_path, capsys):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Lambda(lambda t: t * 2)])
    path = tmp_path / "lambda.keras"
    model.save(path)
    assert zipfile.is_zipfile(path)
    err = _one_line_error(capsys, cli.main(["evaluate", str(path), "--no-timing"]))
    # The reason (safe_mode) and how to load a trusted file, whatever Keras' wording.
    assert "refused because it holds a Lambda layer" in err and "safe_mode=False" in err


def test_a_huge_num_train_is_refused_up_front(tmp_path, capsys):
    code = cli.main(["train", "--num-train", "100000000", "--output", str(tmp_path / "m.keras")])
    err = _one_line_error(capsys, code)
    assert "at most" in err and "GiB" in err


# --- c. output paths checked before any work ----------------------------------------


def test_evaluate_json_onto_the_model_is_refused(project, capsys):
    before = (project / "tiny.keras").read_bytes()
    code = cli.main(["evaluate", str(project / "tiny.keras"), "--data",
                     str(project / "tiny.npz"), "--no-timing", "--json",
                     str(project / "tiny.keras")])
    assert "input" in _one_line_error(capsys, code)
    assert (project / "tiny.keras").read_bytes() == before


@pytest.mark.parametrize("command", [
    ["train", "--widths", "4,8,8,8,8", "--epochs", "1", "--verbose", "0", "-o", "{dir}.keras"],
    ["explain", "{model}", "-o", "{dir}.png"],
])
def test_an_output_that_is_a_folder_is_refused_before_work(project, tmp_path, capsys,
                                                           command):
    os.mkdir(tmp_path / "adir.keras")
    os.mkdir(tmp_path / "adir.png")
    argv = [a.format(dir=tmp_path / "adir", model=project / "tiny.keras") for a in command]
    # A --data that does not exist: the output check must come before reading it.
    code = cli.main(argv + ["--data", str(tmp_path / "missing.npz")])
    assert "existing folder" in _one_line_error(capsys, code)


# --- e. --version, conflicting flags --------------------------------------------------


def test_version(capsys):
    import keras_egt

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert keras_egt.__version__ in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["train", "--model", "mcu", "--widths", "micro"], "--widths"),
    (["evaluate", "{model}", "--threshold", "0.8", "--calibrate", "0.01"], "conflict"),
    (["evaluate", "{model}", "--calibration-data", "{data}"], "--calibration-data"),
])
def test_conflicting_flags_are_refused(project, tmp_path, capsys, argv, message):
    argv = [a.format(model=project / "tiny.keras", data=project / "tiny.npz") for a in argv]
    code = cli.main(argv + ["--data", str(tmp_path / "missing.npz")])
    assert message in _one_line_error(capsys, code)


# --- b. the demo publishes its whole output as one unit -----------------------------


def test_demo_refuses_a_folder_that_is_not_its_output(tmp_path, capsys):
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    err = _one_line_error(capsys, main_demo(other))
    assert "earlier demo" in err and "--overwrite" not in err
    assert os.listdir(other) == ["notes.txt"]


def main_demo(out, *extra):
    return cli.main(["demo", "--output", str(out), "--epochs", "1", "--num-train", "90",
                     "--num-test", "45", "--model", "c4p | c8", "--calibration-users", "4",
                     "--no-export", *extra])


def _earlier_demo(tmp_path):
    out = tmp_path / "egt-demo"
    out.mkdir()
    (out / "summary.json").write_text('{"producer": "keras-egt demo", "preset": "mcu"}')
    (out / "stale.png").write_text("from the first run")
    return out


def test_an_interrupted_demo_keeps_the_previous_output(tmp_path, capsys, monkeypatch):
    from keras_egt.datasets import radar_gestures

    out = _earlier_demo(tmp_path)

    def interrupted(**kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(radar_gestures, "load_data", interrupted)
    _one_line_error(capsys, main_demo(out), expected=130)
    assert sorted(os.listdir(out)) == ["stale.png", "summary.json"]
    assert os.listdir(tmp_path) == ["egt-demo"]  # no staging folder left


@pytest.mark.slow
def test_a_demo_rerun_replaces_the_previous_output_as_one_unit(tmp_path, capsys):
    out = _earlier_demo(tmp_path)
    code = main_demo(out)
    printed = capsys.readouterr().out
    assert "step 1/8: " in printed and "step 4/8: " in printed
    names = sorted(os.listdir(out))
    # All new or all old, never mixed: a tiny model may fail (e.g. calibration refuses
    # a final exit at chance), and then the first run's output stays whole.
    if code == 0:
        assert "stale.png" not in names and "report.md" in names and "egt.keras" in names
    else:
        assert names == ["stale.png", "summary.json"]
    assert os.listdir(tmp_path) == ["egt-demo"]  # no staging folder left


# --- d. tune: a file as --directory, a damaged checkpoint ---------------------------


def test_tune_refuses_a_file_as_directory(project, tmp_path, capsys):
    (tmp_path / "runs").write_text("x")
    code = cli.main(["tune", "--data", str(project / "tiny.npz"), "--directory",
                     str(tmp_path / "runs")])
    assert "not a folder" in _one_line_error(capsys, code)


def test_tune_names_a_damaged_checkpoint(project, tmp_path, capsys):
    pytest.importorskip("keras_tuner")
    project_dir = tmp_path / "runs" / "lambda"
    project_dir.mkdir(parents=True)
    # A search stopped while KerasTuner wrote its state: truncated JSON.
    (project_dir / "tuner0.json").write_text('{"ongoing_trials": {}, "tried_so_far": ["ab')
    (project_dir / "oracle.json").write_text('{"ongoing_trials": {}, "tried_so_far": ["ab')
    code = cli.main(["tune", "--data", str(project / "tiny.npz"), "--widths", "4,8,8,8,8",
                     "--lambdas", "0", "--epochs", "1", "--verbose", "0", "--directory",
                     str(tmp_path / "runs"), "--output-dir", str(tmp_path / "tune")])
    err = _one_line_error(capsys, code)
    assert str(project_dir) in err and "--directory" in err


def test_data_show_takes_data_like_every_command(project, tmp_path, capsys):
    out = tmp_path / "show.png"
    assert cli.main(["data", "show", "--data", str(project / "tiny.npz"), "-o", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert cli.main(["data", "show", "--npz", str(project / "tiny.npz"), "-o", str(out)]) == 0
    with pytest.raises(SystemExit):
        cli.main(["data", "show", "--help"])
    shown = capsys.readouterr().out
    assert "--data" in shown and "--npz" not in shown  # the old name is a hidden alias


# --- f. no traceback for any bad path -------------------------------------------------


def _bad_path(folder, kind):
    path = folder / f"bad-{kind}.keras"
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("not a zip")
    elif kind == "devnull":
        return os.devnull
    return str(path)  # "missing": nothing there


def test_no_command_ends_in_a_traceback_for_bad_paths(project, tmp_path_factory):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    kinds = st.sampled_from(["missing", "folder", "fifo", "empty", "text", "devnull"])
    commands = st.sampled_from([
        ["evaluate", "{bad}", "--no-timing"],
        ["explain", "{bad}", "-o", "{scratch}/a.png"],
        ["export", "{bad}", "{scratch}/deploy"],
        ["evaluate", "{model}", "--data", "{bad}.npz", "--no-timing"],
        ["data", "show", "--data", "{bad}.npz", "-o", "{scratch}/s.png"],
        ["train", "--data", "{bad}.npz", "-o", "{scratch}/m.keras", "--epochs", "1"],
    ])

    @settings(max_examples=20, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(kind=kinds, command=commands)
    def check(kind, command):
        import contextlib
        import io

        scratch = tmp_path_factory.mktemp("bad")
        bad = _bad_path(scratch, kind)
        if "{bad}.npz" in command:
            bad = bad if kind == "devnull" else bad[: -len(".keras")]
            if kind not in ("missing", "devnull"):
                os.rename(bad + ".keras", bad + ".npz")
        argv = [a.format(bad=bad, model=project / "tiny.keras", scratch=scratch)
                for a in command]
        if kind == "devnull":
            argv = [os.devnull if a == os.devnull + ".npz" else a for a in argv]
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = cli.main(argv)
        lines = err.getvalue().strip().splitlines()
        assert code == 2, (argv, err.getvalue())
        assert len(lines) == 1 and lines[0].startswith("keras-egt "), (argv, err.getvalue())

    check()


@pytest.fixture
def mounted(tmp_path):
    """mounted(kind) -> a folder on a real tmpfs: "read-only", 64 KiB ("full") or 8 MiB
    ("roomy"); needs root (skipped where mounting is not allowed)."""
    import subprocess

    made = []

    def mount(kind):
        folder = tmp_path / kind
        folder.mkdir()
        options = "size=8m" if kind == "roomy" else "size=64k" if kind == "full" else "size=64k,ro"
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()[:80]})")
        made.append(folder)
        return folder

    yield mount

    for folder in made:
        subprocess.run(["umount", "-l", str(folder)], check=False)


# The file rules are the same on every backend; the TensorFlow pass runs these once.
@pytest.mark.tensorflow_only
@pytest.mark.parametrize("kind", ["read-only", "full"])
@pytest.mark.parametrize("command", [
    ["train", "--data", "{data}", "--widths", "4,8,8,8,8", "--epochs", "1", "--batch-size", "12",
     "--no-validation", "--verbose", "0", "--output", "{out}/m.keras"],
    ["export", "{model}", "{out}/deploy", "--data", "{data}", "--num-calibration", "8"],
    ["data", "show", "--data", "{data}", "-o", "{out}/s.png"],
])
def test_an_unwritable_or_full_output_is_one_line_and_leaves_nothing(project, mounted, capsys,
                                                                      kind, command):
    out = mounted(kind)
    if kind == "full":  # fill it but for a few bytes, as a disk that ran full would be
        with contextlib.suppress(OSError), open(out / "filler", "wb") as f:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
    before = sorted(os.listdir(out))
    argv = [a.format(data=project / "tiny.npz", model=project / "tiny.keras", out=out)
            for a in command]
    err = _one_line_error(capsys, cli.main(argv))
    assert str(out) in err, err
    assert ("read-only" in err) if kind == "read-only" else ("space" in err), err
    assert sorted(os.listdir(out)) == before  # nothing half-written left behind


@pytest.mark.tensorflow_only
def test_export_onto_a_mount_point(project, mounted, capsys):
    # An empty mount point is filled (across file systems); replacing it is refused by the
    # system (EBUSY), in one line, the first export kept whole.
    out = mounted("roomy")
    argv = ["export", str(project / "tiny.keras"), str(out), "--data", str(project / "tiny.npz"),
            "--num-calibration", "8"]
    assert cli.main(argv) == 0, capsys.readouterr().err
    first = _snapshot(out)
    assert "manifest.json" in first and not any(name.startswith(".") for name in os.listdir(out))
    capsys.readouterr()
    err = _one_line_error(capsys, cli.main(argv + ["--overwrite"]))
    assert str(out) in err and "mount point" in err, err
    assert _snapshot(out) == first
    assert sorted(os.listdir(out.parent)) == [out.name]  # no staging or trash left
