"""The cascade as Cortex-M4 firmware (keras_egt.export.firmware), on an emulated MPS2 AN386.

A tiny exported cascade is built with TFLM + CMSIS-NN, run under qemu-system-arm, and
its labels, exits and int8 confidences are compared with TFLM's Python interpreter (an
independent runtime: x86 reference kernels). The TFLM library (the core and the
cascade's kernels only, a few minutes cold) is built once by the module's firmware run
and cached across runs under $KERAS_EGT_CACHE_DIR / ~/.cache/keras_egt; the other
build tests reuse its objects.

The firmware tests need the TensorFlow pass (the export); the error-message tests run on
every backend. Skipped, with the reason, only where the Arm toolchain or QEMU is not installed (CI
installs them from .ci/run where apt is available) or no TFLM tree is found.
"""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

TOOLS = ("arm-none-eabi-gcc", "arm-none-eabi-g++", "arm-none-eabi-size", "qemu-system-arm")
MISSING_TOOLS = [t for t in TOOLS if shutil.which(t) is None]
needs_tools = pytest.mark.skipif(
    bool(MISSING_TOOLS),
    reason=f"{', '.join(MISSING_TOOLS)} not installed (apt-get install gcc-arm-none-eabi "
    "libnewlib-arm-none-eabi libstdc++-arm-none-eabi-newlib qemu-system-arm; .ci/run does)",
)


def _tflm_or_skip():
    from keras_egt.export import firmware

    try:
        return firmware.find_tflm()
    except FileNotFoundError as error:
        pytest.skip(str(error))


@pytest.fixture(scope="module")
def tiny_deploy(tmp_path_factory):
    import keras

    import keras_egt as egt
    from kit import blob_task

    x, y = blob_task(n=160, size=32, channels=2, num_classes=3, seed=5)
    keras.utils.set_random_seed(7)
    model = egt.EarlyExitCNN(3, (32, 32, 2), widths=(4, 8, 8, 8, 8))
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    model.fit(x[:96], y[:96], epochs=4, batch_size=32, verbose=0)
    folder = tmp_path_factory.mktemp("fw") / "deploy"
    egt.export.export_cascade(model, str(folder), representative_data=x[:64], threshold=0.9)
    return folder, x[96:]


def _with_thresholds(folder, out, thresholds_int8):
    """A copy of a deploy folder whose exits fire at the given int8 thresholds."""
    import math

    from keras_egt.export import c_sources, runtime
    from keras_egt.export import manifest as manifest_lib

    shutil.copytree(folder, out)
    manifest = json.loads((out / "manifest.json").read_text())
    for k, (seg, t) in enumerate(zip(manifest["segments"][:-1], thresholds_int8)):
        # The float threshold that maps to this int8 one, so the manifest stays consistent.
        q = seg["probabilities"]
        value = (int(t) - q["zero_point"]) * q["scale"]
        while runtime.int8_threshold(value, q["scale"], q["zero_point"]) > int(t):
            value = math.nextafter(value, -math.inf)
        assert runtime.int8_threshold(value, q["scale"], q["zero_point"]) == int(t)
        seg["threshold_int8"] = int(t)
        manifest["thresholds"][k] = value
    manifest_lib.seal_manifest(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    c_sources.write_c_sources(str(out), manifest)
    return out


@pytest.fixture(scope="module")
def firmware_run(tiny_deploy, tmp_path_factory):
    """One firmware run with thresholds that make several exits fire on these samples."""
    if MISSING_TOOLS:
        pytest.skip(f"{', '.join(MISSING_TOOLS)} not installed")
    _tflm_or_skip()
    from keras_egt.export import firmware, load_cascade

    folder, x = tiny_deploy
    runner = load_cascade(folder, runtime="tflm")
    confidence = runner.run_segments(x).max(-1)  # (segments, n)
    # Exit 1 fires for about a third of the samples; exits 2.. never, so the rest run
    # to the final exit: both an exit-1 and a final-exit sample occur.
    t1 = int(np.percentile(confidence[0], 67))
    k = len(runner.manifest["segments"])
    deploy = _with_thresholds(folder, tmp_path_factory.mktemp("fw") / "mixed", [t1] + [128] * (k - 2))
    out = tmp_path_factory.mktemp("fw") / "report.json"
    # 16 samples per image: the 24 run in two images, as a large sample set would.
    report = firmware.run_firmware(deploy, x[:24], output=out, samples_per_image=16)
    return deploy, x[:24], report, out


@pytest.mark.tensorflow_only
@needs_tools
def test_firmware_is_bit_exact_with_tflm_python(firmware_run):
    from keras_egt.export import load_cascade

    deploy, x, report, out = firmware_run
    labels, exits = load_cascade(deploy, runtime="tflm").predict(x)
    assert report["bit_exact"] is True
    assert report["samples"] == len(x) == 24
    np.testing.assert_array_equal(report["labels"], labels)
    np.testing.assert_array_equal(report["exits"], exits)
    k = report["num_segments"]
    assert {0, k - 1} <= set(report["exits"])  # the thresholds made both happen
    assert json.loads(Path(out).read_text())["labels"] == report["labels"]


@pytest.mark.tensorflow_only
@needs_tools
def test_firmware_reports_linker_sizes(firmware_run):
    deploy, _, report, _ = firmware_run
    manifest = json.loads((Path(deploy) / "manifest.json").read_text())
    model_bytes = sum(s["flash_bytes"] for s in manifest["segments"])
    fs, rs = report["flash_split"], report["ram_split"]
    assert sum(fs.values()) == report["flash_bytes"]
    assert sum(rs.values()) == report["ram_bytes"]
    # The model arrays are the segment files, plus their pointer and length tables.
    assert model_bytes <= fs["model"] <= model_bytes + 24 * len(manifest["segments"])
    assert fs["tflm"] > 20_000 and fs["kit"] > 0 and fs["harness"] > 0
    # text + data of `arm-none-eabi-size` is the flash image plus the test samples,
    # which the harness keeps outside it (in the emulator's PSRAM).
    assert (report["images"], report["samples_per_image"]) == (2, 16)
    samples_bytes = 16 * math.prod(manifest["segments"][0]["input"]["shape"])
    assert report["outside_flash"] == {".egt_samples": samples_bytes}
    assert report["flash_bytes"] == report["size"]["text"] + report["size"]["data"] - samples_bytes
    # One region per segment (16-byte aligned), against one arena of the largest.
    targets = report["arena_bytes_per_segment_target"]
    assert report["arena_design"] == "per_segment"
    assert rs["arena"] == report["arena_bytes"] == sum(-(-a // 16) * 16 for a in targets)
    assert report["arena_bytes_shared_design"] == max(targets)
    assert 0 < rs["stack"] < report["stack_reserved_bytes"]
    assert all(a > 0 for a in report["arena_bytes_per_segment_target"])


@pytest.mark.tensorflow_only
@needs_tools
def test_firmware_instruction_counts(firmware_run):
    _, _, report, _ = firmware_run
    k = report["num_segments"]
    per_segment = report["instructions_per_segment"]
    assert len(per_segment) == k and all(v > 0 for v in per_segment)
    exits = np.array(report["exits"])
    per_sample = np.array(report["instructions_per_sample"])
    first, last = per_sample[exits == 0], per_sample[exits == k - 1]
    assert first.size and last.size
    assert first.max() < last.min()  # an exit-1 sample costs less than a final-exit one
    # A final-exit sample ran every segment: its cost is about the sum of the segments'.
    assert abs(np.mean(last) - sum(per_segment)) < 0.02 * sum(per_segment)
    assert report["instructions_final_only"] > report["instructions_with_early_exit"] > 0
    assert report["speedup"] == pytest.approx(
        report["instructions_final_only"] / report["instructions_with_early_exit"], rel=1e-3)
    est = report["estimated_ms_at_64mhz"]
    assert est["with_early_exit"] == pytest.approx(
        1e3 * report["instructions_with_early_exit"] / 64e6, rel=1e-3)
    assert "estimate" in est["basis"]
    assert abs(report["measurement"]["calibration_error_instructions"]) <= 8


@pytest.mark.tensorflow_only
@needs_tools
def test_cli_reports_a_mismatch(tiny_deploy, tmp_path, monkeypatch, capsys):
    """The comparison can fail: a reference that disagrees is an error (exit code 1), and
    the report written says so."""
    _tflm_or_skip()
    from keras_egt.cli import main
    from keras_egt.export import runtime

    folder, x = tiny_deploy
    real = runtime.CascadeRunner.predict

    def shifted(self, q):
        labels, exits = real(self, q)
        return (labels + 1) % self.num_classes, exits

    monkeypatch.setattr(runtime.CascadeRunner, "predict", shifted)
    np.savez(tmp_path / "x.npz", x=x[:3])
    out = tmp_path / "out" / "fw.json"
    assert main(["firmware", str(folder), "--samples", str(tmp_path / "x.npz"),
                 "--output", str(out)]) == 1
    assert "NOT bit-exact" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["bit_exact"] is False and report["samples"] == 3
    assert report["mismatches"] == [0, 1, 2]


def test_missing_toolchain_names_the_package(tmp_path, monkeypatch):
    from keras_egt.export import firmware

    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="arm-none-eabi-gcc not found.*gcc-arm-none-eabi"):
        firmware.find_toolchain()


def test_missing_tflm_tree_names_the_variable(tmp_path, monkeypatch):
    from keras_egt.export import firmware

    monkeypatch.setenv(firmware.TFLM_DIR_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="KERAS_EGT_TFLM_DIR") as info:
        firmware.find_tflm()
    # Where to get a tree: the repository, the tested commit, and how to fetch its downloads.
    message = str(info.value)
    assert "\n" not in message
    assert "github.com/tensorflow/tflite-micro" in message
    assert "90b983c2b3f1480642e040bbd2ddb37b998f3424" in message
    assert "third_party_downloads" in message and "--tflm-dir" in message
    (tmp_path / "t/tensorflow/lite/micro/tools/make").mkdir(parents=True)
    (tmp_path / "t/tensorflow/lite/micro/tools/make/Makefile").write_text("")
    with pytest.raises(FileNotFoundError, match="third-party downloads"):
        firmware.find_tflm(tmp_path / "t")


def test_cli_missing_tflm_exits_2_with_one_line(tmp_path, monkeypatch, capsys):
    from keras_egt.cli import main

    folder = tmp_path  # the TFLM tree is looked for first
    monkeypatch.setenv("KERAS_EGT_TFLM_DIR", str(tmp_path / "nowhere"))
    assert main(["firmware", str(folder), "--samples", str(tmp_path / "none.npz")]) == 2
    assert "No such samples file" in capsys.readouterr().err
    np.savez(tmp_path / "x.npz", x=np.zeros((2, 32, 32, 2), np.float32))
    assert main(["firmware", str(folder), "--samples", str(tmp_path / "x.npz")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "KERAS_EGT_TFLM_DIR" in lines[0], lines


def _fake_tflm(root, makefile="all:\n\t@echo nothing\n"):
    tree = Path(root)
    make_dir = tree / "tensorflow/lite/micro/tools/make"
    for name in ("cmsis_nn", "cmsis", "flatbuffers", "gemmlowp"):
        (make_dir / "downloads" / name).mkdir(parents=True, exist_ok=True)
    (make_dir / "Makefile").write_text(makefile)
    return tree


@needs_tools
def test_tflm_cache_is_keyed_by_the_sources_and_never_half_written(tmp_path):
    from keras_egt.export import tflm_build

    gcc = shutil.which("arm-none-eabi-gcc")
    tree = _fake_tflm(tmp_path / "tflm", "microlite:\n\t@exit 3\n")
    key = tflm_build.tree_key(tree, gcc)
    (tree / "tensorflow/lite/micro/micro_interpreter.cc").write_text("// changed\n")
    assert tflm_build.tree_key(tree, gcc) != key
    cache = tmp_path / "cache"
    # A dry run that lists no compile command raises, and no command list or library
    # is left in the cache.
    with pytest.raises(RuntimeError, match="listing TFLM's compile commands failed"):
        tflm_build.build_library(tree, ["Conv2D"], cache, gcc)
    leftovers = [p.name for p in cache.rglob("*") if p.is_file()]
    assert leftovers == ["build.log"], leftovers


def _fake_kernels(root):
    """A TFLM-like tree: a resolver header and kernels, to test the source selection."""
    tree = _fake_tflm(root)
    micro = tree / "tensorflow/lite/micro"
    (micro / "kernels/cmsis_nn").mkdir(parents=True)
    (micro / "micro_mutable_op_resolver.h").write_text(
        "  TfLiteStatus AddConv2D(\n      const TFLMRegistration& registration = Register_CONV_2D()) {\n"
        "  TfLiteStatus AddAdd(const TFLMRegistration& registration = Register_ADD()) {\n")
    (micro / "kernels/cmsis_nn/conv.cc").write_text(
        "namespace tflite {\nTFLMRegistration Register_CONV_2D() { return {}; }\n}\n")
    (micro / "kernels/conv_common.cc").write_text("int ConvPrepare(int x) {\n  return x;\n}\n")
    (micro / "kernels/add.cc").write_text("TFLMRegistration Register_ADD() {\n  Helper(1);\n}\n")
    (micro / "kernels/kernel_util.cc").write_text("int Helper(int a,\n           int b) {\n  return a;\n}\n")
    (micro / "test_helpers.cc").write_text("int Helper(int a) { return a; }\n")
    from keras_egt.export import tflm_build

    for root in tflm_build._ROOTS:
        (tree / root).parent.mkdir(parents=True, exist_ok=True)
        (tree / root).write_text("// what the harness calls\n")
    sources = [*tflm_build._ROOTS, "tensorflow/lite/micro/test_helpers.cc",
               "tensorflow/lite/micro/kernels/cmsis_nn/conv.cc",
               "tensorflow/lite/micro/kernels/conv_common.cc", "tensorflow/lite/micro/kernels/add.cc",
               "tensorflow/lite/micro/kernels/kernel_util.cc"]
    return tree, [{"source": s, "object": s + ".o", "argv": []} for s in sources]


def test_sources_are_the_core_and_the_ops_kernels(tmp_path):
    from keras_egt.export import tflm_build

    tree, commands = _fake_kernels(tmp_path / "tflm")
    # The op's registration is found through the resolver header, in the CMSIS-NN
    # kernel, with its _common.cc; the test helper and the unused op's kernel are not.
    assert tflm_build.seed_sources(commands, tree, ["Conv2D"]) == [
        *tflm_build._ROOTS, "tensorflow/lite/micro/kernels/cmsis_nn/conv.cc",
        "tensorflow/lite/micro/kernels/conv_common.cc"]
    with pytest.raises(ValueError, match="no AddMean"):
        tflm_build.seed_sources(commands, tree, ["Mean"])


@needs_tools
def test_unresolved_symbols_pull_in_their_definitions(tmp_path):
    from keras_egt.export import tflm_build

    tree, _ = _fake_kernels(tmp_path / "tflm")
    cxxfilt = str(Path(shutil.which("arm-none-eabi-gcc")).with_name("arm-none-eabi-c++filt"))
    rest = ["tensorflow/lite/micro/test_helpers.cc", "tensorflow/lite/micro/kernels/add.cc",
            "tensorflow/lite/micro/kernels/kernel_util.cc"]
    # _Z6Helperi is Helper(int): defined by kernel_util.cc (a multi-line definition) and
    # test_helpers.cc; the caller add.cc does not count, and the library file wins.
    assert tflm_build.missing_sources({"_Z6Helperi", "memcpy"}, rest, tree, cxxfilt) == {
        "tensorflow/lite/micro/kernels/kernel_util.cc"}
    assert tflm_build.missing_sources({"memcpy"}, rest, tree, cxxfilt) == set()


def _manifest_ops(deploy):
    manifest = json.loads((Path(deploy) / "manifest.json").read_text())
    return sorted({op for s in manifest["segments"] for op in s["ops"]})


@pytest.mark.tensorflow_only
@needs_tools
def test_op_resolver_holds_exactly_the_manifest_ops(firmware_run):
    """The firmware's resolver finds exactly the manifest's builtin ops (codes from
    TensorFlow's own schema), and the library holds no kernel of an op not used."""
    import subprocess

    from tensorflow.lite.python import schema_py_generated as schema

    deploy, _, report, _ = firmware_run
    ops = _manifest_ops(deploy)
    codes = sorted(getattr(schema.BuiltinOperator, op) for op in ops)
    assert report["resolver_builtin_codes"] == codes
    library = report["tflm_library"]["path"]
    nm = Path(shutil.which("arm-none-eabi-gcc")).with_name("arm-none-eabi-nm")
    defined = {line.split()[-1] for line in subprocess.run(
        [nm, "-g", "--defined-only", "-C", library], capture_output=True, text=True,
        check=True).stdout.splitlines() if line.strip() and not line.endswith(":")}
    for op in ops:
        assert f"tflite::Register_{op}()" in defined, op
    unused = {"ADD", "TRANSPOSE_CONV", "UNIDIRECTIONAL_SEQUENCE_LSTM", "SVDF", "DEPTHWISE_CONV_2D"}
    assert not {f"tflite::Register_{op}()" for op in unused - set(ops)} & defined
    members = subprocess.run([nm.with_name("arm-none-eabi-ar"), "t", library],
                             capture_output=True, text=True, check=True).stdout.split()
    assert len(members) == report["tflm_library"]["objects"] < 200  # microlite: 315


@pytest.mark.tensorflow_only
@needs_tools
def test_setup_is_paid_once_at_boot(firmware_run):
    """Per-segment interpreters allocated at boot: a sample pays only the copies, where
    the shared arena (interpreter + AllocateTensors per segment per sample) pays far
    more, for the same bit-exact answers and more arena RAM."""
    from keras_egt.export import firmware

    deploy, x, report, _ = firmware_run
    shared = firmware.run_firmware(deploy, x[:4], output=False, arena="shared")
    assert shared["bit_exact"] and shared["arena_design"] == "shared"
    assert shared["labels"] == report["labels"][:4]
    assert shared["boot_setup_instructions"] == 0 < report["boot_setup_instructions"]
    old, new = shared["setup_instructions_per_segment"], report["setup_instructions_per_segment"]
    assert all(20 * n < o for n, o in zip(new, old)), (new, old)
    # The kernels' work is the same in both designs.
    for a, b in zip(shared["invoke_instructions_per_segment"],
                    report["invoke_instructions_per_segment"]):
        assert abs(a - b) <= 0.01 * b
    # Set-up, copies and the cascade's own work: <= 3% of an exit-1 sample.
    exits, per_sample = np.array(report["exits"]), np.array(report["instructions_per_sample"])
    first = per_sample[exits == 0].mean()
    assert first - report["invoke_instructions_per_segment"][0] <= 0.03 * first
    assert shared["arena_bytes"] == report["arena_bytes_shared_design"] < report["arena_bytes"]


@pytest.mark.tensorflow_only
@needs_tools
def test_ctrl_c_keeps_objects_and_the_rerun_resumes(firmware_run, tmp_path):
    """SIGINT midway: one line, no compiler left running, the finished objects kept; the
    next build compiles only what was missing."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from keras_egt.export import firmware

    deploy, x, report, _ = firmware_run
    methods = firmware.resolver_methods(json.loads((Path(deploy) / "manifest.json").read_text()))
    built = firmware.tflm_library(methods)  # the module's build: cached, compiles nothing
    assert built["compiled"] == 0
    home = Path(built["library"]).parents[1]  # <cache>/tflm-<key>
    cache = tmp_path / "cache"
    shutil.copytree(home, cache / home.name, ignore=shutil.ignore_patterns("lib"))
    # Remove some of the library's large objects: the build has to compile them again.
    objects = sorted(built["objects"], key=lambda p: -p.stat().st_size)
    removed = [cache / home.name / p.relative_to(home) for p in objects[:6]]
    for path in removed:
        path.unlink()
    np.savez(tmp_path / "x.npz", x=x[:2])
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    process = subprocess.Popen(
        [sys.executable, "-c", "import sys; from keras_egt.cli import main; sys.exit(main())",
         "firmware", str(deploy), "--samples",
         str(tmp_path / "x.npz"), "--cache-dir", str(cache), "--output", str(tmp_path / "fw.json")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 300
    while sum(p.is_file() for p in removed) == 0 and time.time() < deadline:
        time.sleep(0.1)
    assert process.poll() is None, process.communicate()
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130
    lines = [line for line in err.splitlines() if "interrupted" in line or "Traceback" in line]
    assert len(lines) == 1 and "resume" in lines[0], err[-2000:]
    # No compiler of that build is left: none names the cache in its command line.
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        assert str(cache).encode() not in cmdline, cmdline[:200]
    # No half-written object: only complete ones under their final names.
    assert not list((cache / home.name / "obj").rglob(".*.tmp-*"))
    kept = sum(p.is_file() for p in removed)
    assert 1 <= kept < len(removed)
    build = firmware.tflm_library(methods, cache_dir=cache)
    assert build["compiled"] == len(removed) - kept
    assert build["total"] == built["total"] and all(p.is_file() for p in removed)


def _one_line_exit_2(argv, capsys):
    from keras_egt.cli import main

    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def _assert_nothing_built(cache):
    # Nothing compiled: the build cache was never created or is still empty.
    assert not cache.exists() or list(cache.iterdir()) == []


def test_cli_missing_tree_fails_before_any_build(tiny_fake_deploy, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KERAS_EGT_TFLM_DIR", str(tmp_path / "nowhere"))
    cache = tmp_path / "cache"
    line = _one_line_exit_2(["firmware", str(tiny_fake_deploy), "--cache-dir", str(cache)], capsys)
    assert "github.com/tensorflow/tflite-micro" in line and "third_party_downloads" in line
    assert "90b983c2b3f1480642e040bbd2ddb37b998f3424" in line
    _assert_nothing_built(cache)


def test_cli_missing_toolchain_fails_before_any_build(tmp_path, monkeypatch, capsys):
    tree = _fake_tflm(tmp_path / "tflm")  # a tree is found: only the tools are missing
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    cache = tmp_path / "cache"
    line = _one_line_exit_2(["firmware", str(tmp_path / "deploy"), "--tflm-dir", str(tree),
                             "--cache-dir", str(cache)], capsys)
    assert "arm-none-eabi-gcc not found" in line and "gcc-arm-none-eabi" in line
    _assert_nothing_built(cache)


@needs_tools
@pytest.mark.parametrize("broken", ["missing", "not_a_deploy_folder"])
def test_cli_bad_deploy_folder_fails_before_any_build(broken, tmp_path, capsys):
    tree = _fake_tflm(tmp_path / "tflm", "microlite:\n\t@touch built\n")
    folder = tmp_path / "deploy"
    if broken == "not_a_deploy_folder":
        folder.mkdir()
        (folder / "segment_1.tflite").write_bytes(b"not a model")
    cache = tmp_path / "cache"
    line = _one_line_exit_2(["firmware", str(folder), "--tflm-dir", str(tree),
                             "--cache-dir", str(cache)], capsys)
    assert str(folder) in line or "deploy folder" in line
    _assert_nothing_built(cache)
    assert not (tree / "built").exists()


@pytest.fixture
def tiny_fake_deploy(tmp_path):
    return tmp_path / "deploy-not-read"  # the TFLM tree is checked before the folder


def _venv_python(venv):
    return venv / "bin" / "python"


@pytest.mark.slow
@pytest.mark.tensorflow_only
@needs_tools
def test_firmware_from_an_installed_wheel(tiny_deploy, tmp_path):
    """`pip install` (not editable) of keras-egt, then `keras-egt firmware` from outside
    the checkout: the C kit is package data, found through the installed package."""
    import os
    import subprocess
    import sys

    tflm = _tflm_or_skip()
    repo = Path(__file__).resolve().parents[1]
    wheels, venv, work = tmp_path / "wheels", tmp_path / "venv", tmp_path / "cwd"
    work.mkdir()
    run = lambda *cmd, **kw: subprocess.run(  # noqa: E731
        [str(c) for c in cmd], cwd=work, capture_output=True, text=True, **kw)
    built = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                "-q", "-w", wheels, repo)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = wheels.glob("keras_egt-*.whl")
    assert run(sys.executable, "-m", "venv", "--system-site-packages", venv).returncode == 0
    python = _venv_python(venv)
    # --ignore-installed: where keras-egt is already installed beside the system Python
    # (CI's non-editable `pip install .`), pip would otherwise find it satisfied there.
    installed = run(python, "-m", "pip", "install", "-q", "--no-deps", "--ignore-installed", wheel)
    assert installed.returncode == 0, installed.stderr[-2000:]
    # The checkout must not be importable: cwd and PYTHONPATH outside it.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(KERAS_BACKEND="tensorflow", KERAS_EGT_TFLM_DIR=str(tflm))
    where = run(python, "-c", "import keras_egt, sys; print(keras_egt.__file__)", env=env)
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout + where.stderr
    folder, x = tiny_deploy
    np.savez(tmp_path / "x.npz", x=x[:6])
    out = tmp_path / "fw.json"
    result = run(venv / "bin" / "keras-egt", "firmware", folder, "--samples", tmp_path / "x.npz",
                 "--output", out, env=env)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    report = json.loads(out.read_text())
    assert report["bit_exact"] is True and report["samples"] == 6
    from keras_egt.export import load_cascade

    labels, exits = load_cascade(folder, runtime="tflm").predict(x[:6])
    np.testing.assert_array_equal(report["labels"], labels)
    np.testing.assert_array_equal(report["exits"], exits)
