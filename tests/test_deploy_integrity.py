"""Issue 16: a deploy folder that cannot be silently altered, runtimes that never crash,
exports that leave nothing behind when killed.

One tiny exported folder per session (module-scoped). Loads that could crash the
process (a too-small arena, a corrupted segment with its digests recomputed) run
in a child process, so a crash fails the test instead of killing pytest.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_egt as egt
from keras_egt import export
from keras_egt.export import manifest as mf
from kit import BACKEND, blob_task

pytestmark = pytest.mark.tensorflow_only

TINY = (4, 4, 8, 8, 8)
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    if BACKEND != "tensorflow":
        pytest.skip("TensorFlow-only fixture")
    x, y = blob_task(n=96)
    keras.utils.set_random_seed(1234)
    model = egt.EarlyExitCNN(3, (32, 32, 2), widths=TINY)
    model.compile("adam")
    model.fit(x[:64], y[:64], epochs=2, batch_size=32, verbose=0)
    out = str(tmp_path_factory.mktemp("integrity") / "deploy")
    manifest = export.export_cascade(model, out, x[:16], threshold=0.6)
    return {"dir": out, "manifest": manifest, "model": model, "x": x[64:], "y": y[64:]}


def _copy(deployed, tmp_path):
    folder = tmp_path / "deploy"
    shutil.copytree(deployed["dir"], folder)
    return folder


def _edit(folder, edit, reseal=False):
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    if reseal:
        mf.seal_manifest(manifest)
        for name in ("egt_manifest.h", "model_data.c", "model_data.h"):  # stale now
            (folder / name).unlink(missing_ok=True)
    path.write_text(json.dumps(manifest))


def _load_in_child(folder, runtime, x=None):
    """load_cascade (and predict) in a child: (return code, stdout, stderr)."""
    code = (
        "import sys, numpy as np\n"
        "from keras_egt.export import load_cascade\n"
        "try:\n"
        f"    runner = load_cascade({str(folder)!r}, runtime={runtime!r})\n"
        f"    print('LABELS', runner.predict(np.load({str(x)!r}))[0].tolist() if {x is not None} else [])\n"
        "except (ValueError, RuntimeError, FileNotFoundError) as error:\n"
        "    print('ERROR', type(error).__name__, error)\n"
    )
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=300)
    return p.returncode, p.stdout, p.stderr


# ------------------------------------------------------------ the manifest


def test_exported_manifest_is_sealed_and_recorded_in_the_header(deployed):
    manifest = deployed["manifest"]
    assert manifest["manifest_sha256"] == mf.manifest_digest(manifest)
    header = open(os.path.join(deployed["dir"], "egt_manifest.h"), encoding="ascii").read()
    assert f'#define EGT_MANIFEST_SHA256 "{manifest["manifest_sha256"]}"' in header
    assert export.read_manifest(deployed["dir"]) == manifest


@pytest.mark.parametrize("runtime", ["tflm", "litert"])
@pytest.mark.parametrize("edit, message", [
    # The cases, each reproduced on a copy of the folder.
    (lambda m: m["segments"][0].update(threshold_int8=-128),
     r"segments\[0\] \(segment 1\) threshold_int8 is -128 but thresholds\[0\] = 0.6"),
    (lambda m: m["thresholds"].__setitem__(0, 0.0), r"threshold_int8 is \d+ but thresholds\[0\] = 0.0"),
    (lambda m: m["segments"].pop(), "thresholds has 5 entries but segments has 4"),
    (lambda m: m["segments"][0].update(arena_bytes=100), "arena_bytes 100 is below"),
    (lambda m: m["segments"][0].update(threshold_int8="high"), "threshold_int8 must be an int"),
    (lambda m: m.update(criterion="entropy"), "criterion 'entropy' is not supported"),
    (lambda m: m["segments"][1]["input"].update(scale=1.0), "segment 1 features scale"),
    # A field the cascade does not read: only the digest catches it.
    (lambda m: m["segments"][2].update(macs=1), "edited after export"),
])
def test_an_edited_manifest_is_refused_at_load(deployed, tmp_path, runtime, edit, message):
    folder = _copy(deployed, tmp_path)
    _edit(folder, edit)
    with pytest.raises(ValueError, match=message):
        export.load_cascade(folder, runtime=runtime)
    with pytest.raises(ValueError, match=message):
        export.c_sources.write_c_sources(folder, folder / "manifest.json")


def test_a_removed_segment_is_refused_even_when_resealed(deployed, tmp_path):
    folder = _copy(deployed, tmp_path)
    _edit(folder, lambda m: (m["segments"].pop(), m["thresholds"].pop()), reseal=True)
    with pytest.raises(ValueError, match="segment 4.* is the last segment and must not output "
                       "features"):
        export.load_cascade(folder, runtime="litert")

    def consistent(m):  # segment 4 (now the last entry) made to look last in every field
        m["segments"][-1].update(features=None, threshold_int8=None)

    _edit(folder, consistent, reseal=True)
    with pytest.raises(ValueError, match=r"folder also holds \['segment_5.tflite'\]"):
        export.load_cascade(folder, runtime="litert")
    os.remove(folder / "segment_5.tflite")
    # Only the file itself can tell now: segment 4 still has two outputs.
    with pytest.raises(ValueError, match="segment 4 .*2 outputs; expected 1 and 1"):
        export.load_cascade(folder, runtime="litert")


def test_stale_c_sources_are_refused(deployed, tmp_path):
    folder = _copy(deployed, tmp_path)
    header = folder / "egt_manifest.h"
    header.write_text(header.read_text().replace(deployed["manifest"]["manifest_sha256"], "0" * 64))
    with pytest.raises(ValueError, match="egt_manifest.h.*not generated from this manifest"):
        export.load_cascade(folder, runtime="litert")


def test_an_old_format_or_a_nan_is_refused(deployed, tmp_path):
    folder = _copy(deployed, tmp_path)
    _edit(folder, lambda m: m.update(format_version=1))
    with pytest.raises(ValueError, match="format_version is 1; this keras_egt reads version 2"):
        export.load_cascade(folder)
    (folder / "manifest.json").write_text('{"format_version": NaN}')
    with pytest.raises(ValueError, match="not valid JSON.*NaN"):
        export.load_cascade(folder)


# ------------------------------------------------------------ never a crash


def test_a_tiny_arena_with_every_digest_recomputed_fails_cleanly(deployed, tmp_path):
    # The segmentation fault: arena_bytes = 100. With arena_recorded_bytes
    # lowered too and the digest recomputed, the validator cannot know; TFLM's
    # allocation is tried in a child first, so this process survives.
    folder = _copy(deployed, tmp_path)
    _edit(folder, lambda m: m["segments"][0].update(arena_bytes=100, arena_recorded_bytes=100),
          reseal=True)
    code, out, err = _load_in_child(folder, "tflm")
    assert code == 0, err[-2000:]
    assert "ERROR RuntimeError segment 1 (segment_1.tflite): TFLM" in out and "100 bytes" in out


def test_a_caller_arena_below_the_recorded_one_is_refused_before_tflm(deployed):
    seg = deployed["manifest"]["segments"][0]
    with pytest.raises(ValueError, match="below the .* recorded"):
        export.runtime.probe_tflm(deployed["dir"], [seg], [seg["arena_recorded_bytes"] - 1])


def test_a_relative_folder_loads_after_the_working_directory_changes(deployed, tmp_path,
                                                                   monkeypatch):
    # The TFLM check runs in a long-lived child started in the first folder; the second
    # load, from another working directory, must still find its own segments.
    expected = export.load_cascade(deployed["dir"], runtime="tflm").predict(deployed["x"][:8])
    for offset, name in enumerate(("first", "second")):
        where = tmp_path / name
        where.mkdir()
        folder = _copy(deployed, where)
        _edit(folder, lambda m, offset=offset: [s.update(arena_bytes=s["arena_bytes"] + 64 + 16 * offset)
                                 for s in m["segments"]], reseal=True)
        monkeypatch.chdir(where)
        labels, exits = export.load_cascade("deploy", runtime="tflm").predict(deployed["x"][:8])
        np.testing.assert_array_equal(labels, expected[0])
        np.testing.assert_array_equal(exits, expected[1])


def test_threshold_int8_of_a_string_is_a_load_error_not_a_predict_error(deployed, tmp_path):
    folder = _copy(deployed, tmp_path)
    _edit(folder, lambda m: m["segments"][0].update(threshold_int8="high"), reseal=True)
    with pytest.raises(ValueError, match="threshold_int8 must be an int"):
        export.load_cascade(folder, runtime="litert")


def test_property_no_mutation_crashes_a_runtime(deployed, tmp_path):
    """≥ 1,000 hypothesis examples in one child process (tests/deploy_fuzz.py)."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    examples = 1000
    p = subprocess.run(
        [sys.executable, os.path.join(HERE, "deploy_fuzz.py"), deployed["dir"],
         str(tmp_path / "scratch"), str(examples), "16"],
        capture_output=True, text=True, env=env, timeout=1200)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    ran = int(p.stdout.split("EXAMPLES")[-1].split()[0])
    assert ran >= examples, p.stdout


# ------------------------------------------------------------ killed exports


def _export_script(out, data):
    return (
        "import sys, numpy as np, keras\n"
        "import keras_egt as egt\n"
        "from keras_egt import export\n"
        f"model = keras.saving.load_model({str(out) + '.keras'!r})\n"
        "print('START', flush=True)\n"
        f"export.export_cascade(model, {str(out)!r}, np.load({str(data)!r}))\n"
    )


def _stale(tmp_path, pid=None):
    """Staging folders beside the output, and temporary folders of dead processes (or of
    `pid`) in the system temp folder (other processes' live exports may be there)."""
    from keras_egt.export._lifetime import _alive

    temp = []
    for name in os.listdir(tempfile.gettempdir()):
        for prefix in ("keras_egt_export_", "keras_egt_arena_"):
            owner = name[len(prefix):].split("_")[0]
            if name.startswith(prefix) and owner.isdigit():  # (older names carry no pid)
                owner = int(owner)
                if owner == pid or not _alive(owner):
                    temp.append(name)
    return sorted(n for n in os.listdir(tmp_path) if ".tmp-" in n or ".old-" in n), temp


_ORPHAN_PARENT = """
import sys, time
from keras_egt.export import _lifetime
_lifetime.run_child([sys.executable, "-c", sys.argv[1], sys.argv[2]])
"""

_ORPHAN_WORKER = """
import os, signal, sys, time
from keras_egt.export import _lifetime
_lifetime.watch_parent(grace_seconds=30)
# A library that replaced our SIGTERM handler: the parent's death does not interrupt us.
signal.signal(signal.SIGTERM, signal.SIG_IGN)
open(sys.argv[1] + ".started", "w").close()
while not os.path.exists(sys.argv[1] + ".go"):
    time.sleep(0.05)
try:
    _lifetime.check_parent()
    outcome = "published"
except _lifetime.Terminated:
    outcome = "refused"
open(sys.argv[1], "w").write(outcome)
"""


def test_a_second_sigterm_does_not_cut_the_cleanup_short():
    from keras_egt.export import _lifetime

    before = signal.getsignal(signal.SIGTERM)
    cleaned = []
    with pytest.raises(_lifetime.Terminated):
        with _lifetime.terminate_raises():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(30)  # interrupted by the first
            except BaseException:
                os.kill(os.getpid(), signal.SIGTERM)  # the parent's death, heard again
                time.sleep(0.2)
                cleaned.append("done")
                raise
    assert cleaned == ["done"]
    assert signal.getsignal(signal.SIGTERM) is before


def test_an_orphaned_worker_does_not_publish_even_with_sigterm_ignored(tmp_path):
    flag = str(tmp_path / "outcome")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    parent = subprocess.Popen([sys.executable, "-c", _ORPHAN_PARENT, _ORPHAN_WORKER, flag],
                              env=env)
    deadline = time.time() + 60
    while not os.path.exists(flag + ".started") and time.time() < deadline:
        time.sleep(0.05)
    assert os.path.exists(flag + ".started"), "the worker did not start"
    parent.kill()
    parent.wait()
    open(flag + ".go", "w").close()
    while not os.path.exists(flag) and time.time() < deadline:
        time.sleep(0.05)
    with open(flag) as f:
        assert f.read() == "refused"


def _running(pid):
    """Whether `pid` runs (a zombie waiting for a reaper does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        from keras_egt.export._lifetime import _alive

        return _alive(pid)


@pytest.mark.parametrize("backend, sig", [("tensorflow", signal.SIGTERM),
                                          ("jax", signal.SIGKILL)])
def test_a_killed_export_leaves_nothing_after_the_next_run(deployed, tmp_path, backend, sig):
    out = tmp_path / "deploy"
    deployed["model"].save(str(out) + ".keras")
    data = tmp_path / "x.npy"
    np.save(data, deployed["x"][:8])
    pause = tmp_path / "paused"  # tests/hooks/sitecustomize.py: the export stops before segment 2
    env = dict(os.environ, KERAS_BACKEND=backend, KERAS_EGT_TEST_PAUSE=str(pause),
               PYTHONPATH=os.pathsep.join([os.path.join(HERE, "hooks"), ROOT,
                                           os.environ.get("PYTHONPATH", "")]))
    child = subprocess.Popen([sys.executable, "-c", _export_script(out, data)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert child.stdout.readline().strip() == "START"
    deadline = time.time() + 240
    while time.time() < deadline and not pause.exists() and child.poll() is None:
        time.sleep(0.1)
    assert pause.exists(), "the export never reached segment 2"
    exporting = int(pause.read_text())  # the child itself, or its TensorFlow worker (JAX)
    assert (exporting == child.pid) == (backend == "tensorflow")
    child.send_signal(sig)
    child.wait(timeout=120)
    # The exporting process stops: on SIGTERM, or for the worker of the killed JAX
    # parent, on the SIGTERM the kernel sends at its parent's death.
    deadline = time.time() + 60
    while time.time() < deadline and _running(exporting):
        time.sleep(0.1)
    assert not _running(exporting), "the export went on after its parent was killed"
    # Caught: the staging folder is gone; for SIGTERM, the temporary folders too (the
    # SIGKILLed JAX parent's are left for the next run to remove).
    staging, temp = _stale(tmp_path, child.pid)
    assert staging == [], staging
    if sig == signal.SIGTERM:
        assert temp == [], temp
    assert not out.exists()
    export.export_cascade(deployed["model"], out, deployed["x"][:8])
    staging, temp = _stale(tmp_path, child.pid)
    assert staging == [] and temp == [], (staging, temp)
    mask = os.umask(0)
    os.umask(mask)
    assert os.stat(out).st_mode & 0o777 == 0o777 & ~mask  # the user's umask, not 0700


def test_export_into_a_folder_it_cannot_create_names_that_folder(deployed, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(PermissionError, match=f"cannot create the deploy folder '{blocker}/d'"):
        export.export_cascade(deployed["model"], blocker / "d", deployed["x"][:8])
    if os.path.isdir("/proc/self"):  # a folder even root cannot write to
        with pytest.raises(PermissionError, match="cannot create the deploy folder '/proc/deploy'"
                           ) as info:
            export.export_cascade(deployed["model"], "/proc/deploy", deployed["x"][:8])
        assert ".tmp-" not in str(info.value)


# ------------------------------------------------------------ the command line


def test_run_tflite_reports_the_agreement_of_both_runtimes(deployed, tmp_path, capsys):
    from keras_egt.cli import main

    npz = tmp_path / "data.npz"
    np.savez(npz, x_train=deployed["x"], y_train=deployed["y"], x_test=deployed["x"],
             y_test=deployed["y"])
    assert main(["run-tflite", deployed["dir"], "--data", str(npz)]) == 0
    out = capsys.readouterr().out
    tflm = export.load_cascade(deployed["dir"], runtime="tflm").predict(deployed["x"])
    litert = export.load_cascade(deployed["dir"], runtime="litert").predict(deployed["x"])
    labels = 100 * np.mean(tflm[0] == litert[0])
    exits = 100 * np.mean(tflm[1] == litert[1])
    assert (f"agreement with litert on the same samples: labels {labels:.2f}%, exits "
            f"{exits:.2f}%") in out
    # An edited manifest is a one-line error, exit code 2.
    folder = _copy(deployed, tmp_path)
    _edit(folder, lambda m: m["segments"][0].update(threshold_int8=-128))
    assert main(["run-tflite", str(folder), "--data", str(npz)]) == 2
    assert "threshold_int8 is -128" in capsys.readouterr().err


# ------------------------------------------------------------ issue 24: promises kept


def _other_digest(digest):
    return ("0" if digest[0] != "0" else "1") + digest[1:]


def test_a_stale_model_data_c_is_refused(deployed, tmp_path):
    # Another export's model_data.c: the same file names, another segment's sha256
    # and length. egt_manifest.h still matches, so only model_data.c can tell.
    folder = _copy(deployed, tmp_path)
    seg = deployed["manifest"]["segments"][1]
    source = folder / "model_data.c"
    text = source.read_text()
    source.write_text(text.replace(seg["sha256"], _other_digest(seg["sha256"])))
    with pytest.raises(ValueError, match=r"model_data.c' was not generated from this manifest "
                                         r"\(segment 2 of"):
        export.load_cascade(folder, runtime="litert")
    lens = [str(s["flash_bytes"]) for s in deployed["manifest"]["segments"]]
    stale = text.replace(", ".join(lens) + "}", ", ".join(lens[:-1] + ["12"]) + "}")
    assert stale != text
    source.write_text(stale)
    with pytest.raises(ValueError, match="model_data.c.*g_egt_segment_lens"):
        export.load_cascade(folder, runtime="litert")


def test_a_stale_model_data_h_is_refused(deployed, tmp_path):
    folder = _copy(deployed, tmp_path)
    header = folder / "model_data.h"
    count = len(deployed["manifest"]["segments"])
    header.write_text(header.read_text().replace(f"EGT_MODEL_DATA_NUM_SEGMENTS {count}",
                                                 f"EGT_MODEL_DATA_NUM_SEGMENTS {count + 1}"))
    with pytest.raises(ValueError, match="model_data.h' was not generated from this manifest"):
        export.load_cascade(folder, runtime="litert")


def test_the_probe_refuses_a_segment_swapped_after_the_check(deployed, tmp_path):
    # The parent checked segment 1 against the manifest; then the file is replaced.
    # The child must check the bytes it runs, not trust the path.
    folder = _copy(deployed, tmp_path)
    first, second = deployed["manifest"]["segments"][:2]
    (folder / first["file"]).write_bytes((folder / second["file"]).read_bytes())
    arena = first["arena_bytes"] + 7  # not probed before in this process
    with pytest.raises(RuntimeError, match=r"segment 1 .*'segment_1.tflite' changed after it "
                                           r"was checked"):
        export.runtime.probe_tflm(folder, [first], [arena])


def _edited(data, edit):
    """The flatbuffer `data` after `edit(model_object)`."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(data))
    edit(model)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _rewrite_segment(folder, seg, edit):
    """Edits segment `seg` with `edit(model_object)`, then recomputes every digest."""
    path = folder / seg["file"]
    data = _edited(path.read_bytes(), edit)
    path.write_bytes(data)

    def update(m):
        m["segments"][seg["index"] - 1].update(sha256=mf.hashlib.sha256(data).hexdigest(),
                                               flash_bytes=len(data))
    _edit(folder, update, reseal=True)


def _zero_stride(model):
    from tensorflow.lite.python import schema_py_generated as schema

    for op in model.subgraphs[0].operators:
        if isinstance(op.builtinOptions, schema.Conv2DOptionsT):
            op.builtinOptions.strideW = 0
            return
    raise AssertionError("no Conv2D in segment 1")


def _truncate_weights(model):
    buffers = [b for b in model.buffers if b.data is not None and len(b.data) > 64]
    buffers[0].data = buffers[0].data[:4]


@pytest.mark.parametrize("edit", [_zero_stride, _truncate_weights], ids=["stride0", "weights4"])
def test_a_structurally_invalid_segment_is_refused_before_tflm(deployed, tmp_path, edit):
    folder = _copy(deployed, tmp_path)
    _rewrite_segment(folder, deployed["manifest"]["segments"][0], edit)
    code, out, err = _load_in_child(folder, "tflm")
    assert code == 0, err[-2000:]
    assert "ERROR RuntimeError segment 1 (segment_1.tflite)" in out, out + err[-2000:]
    assert "not a valid TFLite flatbuffer (LiteRT's verifier" in out, out


VERIFIER = "not a valid TFLite flatbuffer (LiteRT's verifier"


def test_arena_measurement_refuses_an_invalid_flatbuffer(deployed):
    # The export measures every segment's arena in a child that hands TFLM the bytes;
    # a weight buffer cut to 4 bytes would be read out of bounds there.
    seg = deployed["manifest"]["segments"][0]
    data = _edited((Path(deployed["dir"]) / seg["file"]).read_bytes(), _truncate_weights)
    with pytest.raises(ValueError, match=r"measuring the TFLM arena: .*" + re.escape(VERIFIER)):
        export.runtime.tflm_arena_bytes(data, seg["input"]["shape"], seg["input"]["zero_point"])


def test_tflm_gets_only_the_bytes_the_probe_verified(deployed):
    first, second = deployed["manifest"]["segments"][:2]
    folder = Path(deployed["dir"])
    export.runtime.probe_tflm(folder, [first], [first["arena_bytes"]])
    # The runner's own load path: bytes other than the probed ones are refused, even
    # under the probed segment's manifest entry.
    with pytest.raises(RuntimeError, match=r"segment 1 \(segment_1.tflite\): these bytes were "
                                           r"not verified and run on TFLM .* Received: sha256"):
        export.runtime.interpreters._TFLMSegment((folder / second["file"]).read_bytes(), first)
    segment = export.runtime.interpreters._TFLMSegment((folder / first["file"]).read_bytes(), first)
    probabilities, features = segment(np.full(first["input"]["shape"],
                                              first["input"]["zero_point"], np.int8))
    assert probabilities.shape == (3,) and features.shape == tuple(first["features"]["shape"])


def test_probe_tflm_file_refuses_an_invalid_file_and_opens_a_valid_one(deployed, tmp_path):
    seg = deployed["manifest"]["segments"][-1]
    good = Path(deployed["dir"]) / seg["file"]
    bad = tmp_path / "final_only.tflite"
    bad.write_bytes(_edited(good.read_bytes(), _truncate_weights))
    shape, zero_point = seg["input"]["shape"], seg["input"]["zero_point"]
    with pytest.raises(RuntimeError, match=r"'final_only.tflite': TFLM could not .*"
                                           + re.escape(VERIFIER)):
        export.runtime.probe_tflm_file(bad, seg["arena_bytes"], shape, zero_point)
    data = export.runtime.probe_tflm_file(good, seg["arena_bytes"], shape, zero_point)
    interpreter = export.runtime.tflm_interpreter(data, seg["arena_bytes"], "the last segment")
    interpreter.set_input(np.full(shape, zero_point, np.int8), 0)
    interpreter.invoke()
    assert np.array(interpreter.get_output(0)).shape == (1, 3)
