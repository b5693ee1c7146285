"""The firmware kit: keras_egt.export.c_sources (C sources of a deploy folder) and keras_egt/export/kit/*.c.

The C code is compiled with `gcc -std=c99 -Wall -Wextra -Werror -pedantic` and driven
through tflite/host_test.c; its answers are compared with numpy references written
here from the rule in the manifest contract:

    threshold_int8 = clamp(ceil(t / scale + zero_point), -128, 128)
    exit at segment k  iff  max_i q_i >= threshold_int8[k]   (the last always exits)

The pure-C parts do not depend on the Keras backend, so the whole file runs in the
TensorFlow pass only.
"""

import ctypes
import hashlib
import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from keras_egt.export import c_sources as firmware
from keras_egt.export.manifest import FORMAT_VERSION, seal_manifest

pytestmark = pytest.mark.tensorflow_only

REPO = Path(__file__).resolve().parent.parent
KIT = REPO / "keras_egt" / "export" / "kit"  # the C kit, package data of keras_egt.export
GUIDE = REPO / "tflite"  # the integration guide and its host test driver
GCC = shutil.which("gcc")
needs_gcc = pytest.mark.skipif(
    GCC is None, reason="gcc not found: the C firmware kit is compiled with gcc on the host"
)
STRICT = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"]
EGT_OK, EGT_ERR_INVOKE = 0, -2
FAKE_FAIL_STATUS = 7  # what host_test's fake invoke returns on its fail_segment


# ---------------------------------------------------------------- references


def ref_threshold_int8(t, scale, zero_point):
    return int(min(max(math.ceil(t / scale + zero_point), -128), 128))


def ref_should_exit(q, threshold_int8):
    return int(np.max(q) >= threshold_int8)


def ref_cascade(table, thresholds, fail_segment):
    """(rc, label, exit, confidence, calls, invoke_status) of one sample."""
    num_segments = len(table)
    for k in range(1, num_segments + 1):
        if k == fail_segment:
            return (EGT_ERR_INVOKE, -1, k, 0, k, FAKE_FAIL_STATUS)
        q = table[k - 1]
        if k == num_segments or ref_should_exit(q, thresholds[k - 1]):
            label = int(np.argmax(q))
            return (EGT_OK, label, k, int(q[label]), k, 0)


def python_threshold_int8():
    """keras_egt.export.int8_threshold: the Python copy the C one must equal. No
    fallback: a broken `keras_egt.export` import fails the tests that use it."""
    from keras_egt.export import int8_threshold

    return int8_threshold


# ---------------------------------------------------------------- helpers


_SANITIZE = None


def sanitize_flags(tmp_dir):
    """ASan/UBSan flags when this gcc can link them, else none."""
    global _SANITIZE
    if _SANITIZE is None:
        src = Path(tmp_dir) / "probe.c"
        src.write_text("int main(void) { return 0; }\n")
        flags = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"]
        ok = subprocess.run([GCC, *flags, str(src), "-o", str(src.with_suffix(""))],
                            capture_output=True).returncode == 0
        _SANITIZE = flags if ok else []
    return _SANITIZE


def build_host_test(deploy, out_dir):
    exe = Path(out_dir) / "host_test"
    cmd = [GCC, *STRICT, *sanitize_flags(out_dir), "-I", str(deploy), "-I", str(KIT),
           str(GUIDE / "host_test.c"), str(KIT / "egt_cascade.c"),
           str(Path(deploy) / "model_data.c"), "-o", str(exe)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"gcc failed:\n{' '.join(cmd)}\n{proc.stderr}"
    return exe


def run(exe, *args):
    proc = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def make_manifest(folder, sizes, shapes, num_classes=3, rng=None, class_names=None):
    """A hand-made manifest of len(sizes) segments of random bytes, following the contract."""
    rng = rng or np.random.default_rng(0)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    segments = []
    n = len(sizes)
    scales = [1 / 255] + [0.013 * k + 0.001 for k in range(1, n)]
    zps = [-128] + [-128 + 3 * k for k in range(1, n)]
    for k in range(1, n + 1):
        data = rng.integers(0, 256, size=sizes[k - 1], dtype=np.uint8).tobytes()
        name = f"segment_{k}.tflite"
        (folder / name).write_bytes(data)
        features = None
        if k < n:
            features = {"shape": shapes[k], "dtype": "int8", "scale": scales[k],
                        "zero_point": zps[k], "output_index": 1 if k % 2 else 0}
        segments.append({
            "index": k, "file": name, "sha256": hashlib.sha256(data).hexdigest(),
            "flash_bytes": len(data), "arena_bytes": 1000 + 37 * k * k,
            "arena_recorded_bytes": 900 + 37 * k * k, "macs": 5000 * k,
            "input": {"shape": shapes[k - 1], "dtype": "int8", "scale": scales[k - 1],
                      "zero_point": zps[k - 1]},
            "probabilities": {"shape": [1, num_classes], "dtype": "int8",
                              "scale": 1 / 256, "zero_point": -128,
                              "output_index": 0 if k % 2 else 1},
            "features": features,
            "threshold_int8": None if k == n else [103, -128, 128, 0, 77, 1][k % 6],
            "ops": ["CONV_2D", "MAX_POOL_2D", "MUL", "SUM", "FULLY_CONNECTED", "SOFTMAX"][: 2 + k],
        })
    # The float thresholds that give those int8 ones (p = (q - zero point) * scale).
    thresholds = [(s["threshold_int8"] + 128) / 256 for s in segments[:-1]] + [0.9]
    return seal_manifest({
        "format_version": FORMAT_VERSION, "keras_egt_version": "test",
        "num_classes": num_classes, "class_names": class_names, "input_shape": shapes[0][1:],
        "criterion": "max_probability", "thresholds": thresholds, "segments": segments,
    })


SIZES = [37, 4096, 1, 12, 5001]  # not multiples of a line; one byte; a page
SHAPES = [[1, 32, 32, 2], [1, 16, 16, 4], [1, 8, 8, 8], [1, 4, 4, 8], [1, 4, 4, 16]]


@pytest.fixture(scope="module")
def fake_deploy(tmp_path_factory):
    folder = tmp_path_factory.mktemp("deploy")
    manifest = make_manifest(folder, SIZES, SHAPES, class_names=['say "hi"', "a?b", "wave"])
    (folder / "manifest.json").write_text(json.dumps(manifest))
    firmware.write_c_sources(folder, manifest)
    return folder, manifest


@pytest.fixture(scope="module")
def host_test(fake_deploy, tmp_path_factory):
    if GCC is None:
        pytest.skip("gcc not found: the C firmware kit is compiled with gcc on the host")
    return build_host_test(fake_deploy[0], tmp_path_factory.mktemp("build"))


def parse_c_arrays(text):
    """{name: bytes} of every `const unsigned char NAME[N] = {...};` in C source."""
    import re

    arrays = {}
    for m in re.finditer(r"const unsigned char (\w+)\[(\d+)\] = \{([^}]*)\};", text):
        values = [int(v, 16) for v in m.group(3).replace("\n", " ").split(",")]
        assert len(values) == int(m.group(2))
        arrays[m.group(1)] = bytes(values)
    return arrays


# ---------------------------------------------------------------- pure Python


def test_format_c_array_round_trip():
    data = bytes(range(256)) + b"\x00\xff"
    text = firmware.format_c_array("g_blob", data, per_line=7)
    assert text.startswith("EGT_MODEL_ALIGN const unsigned char g_blob[258] = {")
    assert parse_c_arrays(text) == {"g_blob": data}
    assert f"const unsigned int g_blob_len = {len(data)};" in text
    rows = text.split("{")[1].split("}")[0].strip().splitlines()
    assert [len(row.rstrip(",").split(",")) for row in rows] == [7] * 36 + [258 - 7 * 36]
    assert firmware.format_c_array("x", b"\x01", align_macro=None).startswith("const unsigned")
    with pytest.raises(ValueError, match="empty"):
        firmware.format_c_array("x", b"")
    with pytest.raises(ValueError, match="C identifier"):
        firmware.format_c_array("2x", b"\x01")


def test_format_c_float_reads_back_as_float32():
    rng = np.random.default_rng(1)
    values = list(np.exp(rng.uniform(-20, 5, size=200))) + [1.0, 0.5, 1 / 255, 1 / 256, 3e-5]
    for v in values:
        text = firmware.format_c_float(v)
        assert text.endswith("f") and any(c in text for c in ".e")
        assert np.float32(float(text[:-1])) == np.float32(v)
    with pytest.raises(ValueError, match="non-finite"):
        firmware.format_c_float(float("nan"))


def test_tflm_op_methods_are_the_resolver_names():
    # Expected values copied from tensorflow/lite/micro/micro_mutable_op_resolver.h.
    expected = {
        "CONV_2D": "Conv2D", "DEPTHWISE_CONV_2D": "DepthwiseConv2D",
        "MAX_POOL_2D": "MaxPool2D", "AVERAGE_POOL_2D": "AveragePool2D",
        "FULLY_CONNECTED": "FullyConnected", "SOFTMAX": "Softmax", "MEAN": "Mean",
        "SUM": "Sum", "MUL": "Mul", "ADD": "Add", "RESHAPE": "Reshape",
        "QUANTIZE": "Quantize", "REDUCE_MAX": "ReduceMax", "LOGISTIC": "Logistic",
        "SPACE_TO_BATCH_ND": "SpaceToBatchNd", "L2_NORMALIZATION": "L2Normalization",
        "BATCH_MATMUL": "BatchMatMul", "PADV2": "PadV2", "RELU6": "Relu6",
        "ADD_N": "AddN", "CUMSUM": "CumSum", "SELECT_V2": "SelectV2",
    }
    assert {op: firmware.tflm_op_method(op) for op in expected} == expected
    with pytest.raises(ValueError, match="operator name"):
        firmware.tflm_op_method("CONV 2D")


def test_model_data_c_holds_the_files(fake_deploy):
    folder, manifest = fake_deploy
    arrays = parse_c_arrays((folder / "model_data.c").read_text())
    assert arrays == {
        f"g_egt_segment_{s['index']}": (folder / s["file"]).read_bytes()
        for s in manifest["segments"]
    }


def test_write_c_sources_refuses_a_tampered_segment(tmp_path):
    manifest = make_manifest(tmp_path, SIZES[:3], SHAPES[:3])
    path = tmp_path / "segment_2.tflite"
    data = bytearray(path.read_bytes())
    data[100] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="segment 2.*does not match the manifest"):
        firmware.write_c_sources(tmp_path, manifest)
    assert not any(p.suffix in (".c", ".h", ".tmp") for p in tmp_path.iterdir())


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m["segments"][1]["input"].update(scale=0.5), "segment 1 features scale"),
        (lambda m: m["segments"][2]["input"].update(zero_point=5), "zero_point"),
        (lambda m: m["segments"][1]["input"].update(shape=[1, 16, 16, 5]), "shape"),
        (lambda m: m["segments"][0].update(features=None), "only the last"),
        (lambda m: m["segments"][2].update(features=dict(m["segments"][1]["features"])),
         "must not output features"),
        (lambda m: m["segments"][0]["input"].update(dtype="float32"), "full-int8"),
        (lambda m: m["segments"][0].pop("arena_bytes"), "arena_bytes"),
        (lambda m: m["segments"][0].update(threshold_int8=129), r"\[-128, 128\]"),
        (lambda m: m["segments"][1].update(index=3), "index"),
        (lambda m: m["segments"][0]["probabilities"].update(shape=[1, 4]), "num_classes"),
        (lambda m: m["segments"][0].update(file="../segment_1.tflite"), "plain file name"),
        (lambda m: m["segments"][0].update(ops=["FLEX DELEGATE"]), "operator name"),
    ],
)
def test_write_c_sources_refuses_a_broken_manifest(tmp_path, edit, message):
    manifest = make_manifest(tmp_path, SIZES[:3], SHAPES[:3])
    edit(manifest)
    with pytest.raises(ValueError, match=message):
        firmware.write_c_sources(tmp_path, manifest)
    assert not any(p.suffix in (".c", ".h") for p in tmp_path.iterdir())


def test_write_c_sources_replaces_files_atomically(tmp_path, monkeypatch):
    manifest = make_manifest(tmp_path, [10, 20], [[1, 8, 8, 1], [1, 4, 4, 2]])
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "model_data.c").write_text("old")
    paths = firmware.write_c_sources(tmp_path, tmp_path / "manifest.json")  # a path works
    assert [Path(p).name for p in paths] == ["model_data.h", "model_data.c", "egt_manifest.h"]
    assert (tmp_path / "model_data.c").read_text() != "old"
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    real_replace = os.replace

    def failing_replace(src, dst):
        if str(dst).endswith("model_data.c"):
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    manifest["segments"][0]["arena_bytes"] += 1
    seal_manifest(manifest)
    with pytest.raises(OSError, match="disk full"):
        firmware.write_c_sources(tmp_path, manifest)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert set(after) == set(before)  # no temporary file left behind
    assert after["model_data.c"] == before["model_data.c"]  # old or new, never partial


# ---------------------------------------------------------------- compiled with gcc


@needs_gcc
def test_selftest(host_test):
    assert run(host_test, "selftest").strip() == "ok"


def assert_info_matches(exe, m):
    """`host_test info` (the C constants) against the manifest `m`."""
    segs = m["segments"]
    info = {}
    for line in run(exe, "info").splitlines():
        key, _, value = line.partition(" ")
        info.setdefault(key, []).append(value)
    ints = lambda key: [int(v) for v in info[key][0].split()]  # noqa: E731
    assert int(info["num_segments"][0]) == int(info["model_data_num_segments"][0]) == len(segs)
    assert int(info["num_classes"][0]) == m["num_classes"]
    assert ints("input_shape") == segs[0]["input"]["shape"]
    assert int(info["input_bytes"][0]) == math.prod(segs[0]["input"]["shape"])
    assert np.float32(info["input_scale"][0]) == np.float32(segs[0]["input"]["scale"])
    assert int(info["input_zero_point"][0]) == segs[0]["input"]["zero_point"]
    assert int(info["arena_bytes"][0]) == max(s["arena_bytes"] for s in segs)
    assert int(info["arena_bytes_sum"][0]) == sum(s["arena_bytes"] for s in segs)
    feature_bytes = [math.prod(s["features"]["shape"]) if s["features"] else 0 for s in segs]
    assert int(info["max_feature_bytes"][0]) == max(feature_bytes)
    assert ints("feature_bytes") == feature_bytes
    assert int(info["flash_bytes"][0]) == sum(s["flash_bytes"] for s in segs)
    assert ints("thresholds_int8") == [s["threshold_int8"] for s in segs[:-1]] + [-128]
    assert ints("segment_arena_bytes") == [s["arena_bytes"] for s in segs]
    assert ints("segment_lens") == [s["flash_bytes"] for s in segs]
    assert ints("probs_output_indices") == [s["probabilities"]["output_index"] for s in segs]
    assert ints("features_output_indices") == [
        s["features"]["output_index"] if s["features"] else -1 for s in segs
    ]
    assert info.get("class_name") == (m.get("class_names") or None)
    ops = sorted({op for s in segs for op in s["ops"]})
    assert info["tflm_op"] == [firmware.tflm_op_method(op) for op in ops]
    assert int(info["num_tflm_ops"][0]) == len(ops)
    probs = segs[0]["probabilities"]
    assert np.float32(info["segment_1_probs_scale"][0]) == np.float32(probs["scale"])
    assert int(info["segment_1_probs_zero_point"][0]) == probs["zero_point"]
    assert int(info["segment_1_threshold_int8"][0]) == segs[0]["threshold_int8"]
    assert int(info["segment_1_flash_bytes"][0]) == segs[0]["flash_bytes"]
    assert int(info["segment_1_arena_bytes"][0]) == segs[0]["arena_bytes"]


def assert_arrays_equal_files(exe, folder, manifest, dump_dir):
    """`host_test dump`: every C array equals its .tflite file, byte for byte, aligned."""
    lines = run(exe, "dump", dump_dir).splitlines()
    assert len(lines) == len(manifest["segments"])
    for seg, line in zip(manifest["segments"], lines):
        k = seg["index"]
        assert line == f"segment {k} {seg['flash_bytes']} 1"  # length, 16-byte aligned
        dumped = (Path(dump_dir) / f"segment_{k}.bin").read_bytes()
        assert dumped == (Path(folder) / seg["file"]).read_bytes()
        assert hashlib.sha256(dumped).hexdigest() == seg["sha256"]


@needs_gcc
def test_arrays_equal_the_tflite_files_byte_for_byte(fake_deploy, host_test, tmp_path):
    assert_arrays_equal_files(host_test, *fake_deploy, tmp_path)


@needs_gcc
def test_manifest_header_matches_the_manifest(fake_deploy, host_test):
    assert_info_matches(host_test, fake_deploy[1])


def _decide_cases(rng, num_classes=9):
    """Random int8 probability vectors with thresholds, rich in ties and the ends."""
    q = rng.integers(-128, 128, size=(3000, num_classes))
    q[:300] = -128  # all at the bottom
    q[300:400] = 127
    q[400:600, : num_classes // 2] = q[400:600, :1]  # ties between classes
    thr = rng.integers(-130, 131, size=len(q))
    thr[::7] = -128
    thr[1::7] = 128
    thr[2::7] = q[2::7].max(1)  # threshold equal to the max: exits
    thr[3::7] = q[3::7].max(1) + 1  # one above: stays
    return q, thr


@needs_gcc
def test_c_exit_decisions_equal_python(host_test, tmp_path):
    q, thr = _decide_cases(np.random.default_rng(2))
    lines = [f"{len(q)} {q.shape[1]}"]
    lines += [" ".join(map(str, [t, *row])) for t, row in zip(thr, q)]
    (tmp_path / "decide.txt").write_text("\n".join(lines) + "\n")
    out = np.array([list(map(int, line.split()))
                    for line in run(host_test, "decide", tmp_path / "decide.txt").splitlines()])
    expected_exit = np.array([ref_should_exit(row, t) for row, t in zip(q, thr)])
    np.testing.assert_array_equal(out[:, 0], expected_exit)
    np.testing.assert_array_equal(out[:, 1], np.argmax(q, axis=1))  # first max on ties
    # The cases are not degenerate: both decisions occur, at both fixed ends too.
    assert 0 < expected_exit.mean() < 1
    assert expected_exit[thr == -128].all() and not expected_exit[thr == 128].any()


@needs_gcc
def test_c_thresholds_equal_python(host_test, tmp_path):
    py_threshold = python_threshold_int8()
    rng = np.random.default_rng(3)
    cases = [(0.9, 1 / 256, -128), (0.5, 1 / 256, -128), (1.0, 1 / 256, -128),
             (0.0, 1 / 256, -128), (1e-9, 1 / 256, -128), (0.3, 0.1, -3), (-0.25, 0.1, 0),
             (2.0, 1 / 256, -128), (-1.0, 1 / 256, -128), (0.75, 0.00390625, -128)]
    # Thresholds on the quantization grid (exact ties) and random ones.
    for _ in range(400):
        scale = float(np.float32(np.exp(rng.uniform(-7, -1))))
        zp = int(rng.integers(-128, 128))
        grid = scale * (int(rng.integers(-128, 128)) - zp)
        cases.append((grid, scale, zp))
        cases.append((float(rng.uniform(-0.2, 1.2)), scale, zp))
    text = f"{len(cases)}\n" + "".join(f"{t.hex()} {float(s).hex()} {z}\n"
                                       for t, s, z in ((float(t), s, z) for t, s, z in cases))
    (tmp_path / "thr.txt").write_text(text)
    got = [int(v) for v in run(host_test, "threshold", tmp_path / "thr.txt").split()]
    expected = [ref_threshold_int8(t, s, z) for t, s, z in cases]
    assert got == expected
    assert [int(py_threshold(t, s, z)) for t, s, z in cases] == expected
    assert {-128, 128} <= set(expected) and len(set(expected)) > 100


def _cascade_file(path, tables, thresholds, fails):
    n, s, c = tables.shape
    lines = [f"{n} {s} {c}", " ".join(map(str, thresholds))]
    for table, fail in zip(tables, fails):
        lines.append(str(fail))
        lines += [" ".join(map(str, row)) for row in table]
    Path(path).write_text("\n".join(lines) + "\n")


def _run_cascade(host_test, path, tables, thresholds, fails):
    _cascade_file(path, tables, thresholds, fails)
    rows = [list(map(int, line.split())) for line in run(host_test, "cascade", path).splitlines()]
    assert len(rows) == len(tables)
    return np.array(rows)


@needs_gcc
@pytest.mark.parametrize("num_segments", [1, 2, 5, 7])
def test_driver_runs_the_cascade_and_hands_features_over(host_test, tmp_path, num_segments):
    rng = np.random.default_rng(num_segments)
    n, c = 400, 4
    tables = rng.integers(-128, 128, size=(n, num_segments, c))
    thresholds = rng.integers(60, 128, size=num_segments)
    thresholds[0] = 128 if num_segments > 2 else thresholds[0]  # exit 1 never fires
    fails = np.where(rng.random(n) < 0.15, rng.integers(1, num_segments + 1, size=n), 0)
    out = _run_cascade(host_test, tmp_path / "cascade.txt", tables, thresholds, fails)
    # Columns: rc label exit confidence calls invoke_status errors
    assert (out[:, 6] == 0).all(), "the fake invoke saw a wrong call order, pointer or buffer"
    expected = np.array([ref_cascade(t, thresholds, f) for t, f in zip(tables, fails)])
    np.testing.assert_array_equal(out[:, :6], expected)
    if num_segments > 2:  # every path was taken
        assert {1, num_segments} < set(expected[:, 2]) | {1}
        assert len(set(expected[expected[:, 0] == 0, 2])) >= 3
        assert (expected[:, 0] == EGT_ERR_INVOKE).any()


@needs_gcc
def test_generated_sources_compile_as_cpp(fake_deploy, tmp_path):
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ not found: TFLM firmware is C++, the C++ check needs g++")
    folder, manifest = fake_deploy
    # A stand-in for tflite::MicroMutableOpResolver: one AddX() per op the X-macro names.
    methods = sorted({firmware.tflm_op_method(op) for s in manifest["segments"] for op in s["ops"]})
    resolver = "".join(f"  int Add{m}() {{ return ++count; }}\n" for m in methods)
    (tmp_path / "main.cc").write_text(f"""
#include <cstdio>
#include "egt_cascade.h"
#include "egt_manifest.h"
#include "model_data.h"
struct Resolver {{
  int count = 0;
{resolver}}};
int main() {{
  Resolver resolver;
#define EGT_ADD_OP(name) if (resolver.Add##name() == 0) return 1;
  EGT_FOR_EACH_TFLM_OP(EGT_ADD_OP)
  static const int16_t thresholds[EGT_NUM_SEGMENTS] = EGT_THRESHOLDS_INT8;
  std::printf("%d %d %u %d\\n", resolver.count, EGT_NUM_TFLM_OPS, g_egt_segment_lens[0],
              egt_should_exit(reinterpret_cast<const int8_t*>(g_egt_segments[0]), 1,
                              thresholds[0]) >= 0);
  return 0;
}}
""")
    objects = []
    for src, lang in [(KIT / "egt_cascade.c", "c"), (folder / "model_data.c", "c++")]:
        obj = tmp_path / (src.stem + ".o")
        std = "-std=c99" if lang == "c" else "-std=c++11"
        compiler = GCC if lang == "c" else gxx
        proc = subprocess.run([compiler, "-x", lang, std, *STRICT[1:], "-I", str(folder),
                               "-I", str(KIT), "-c", str(src), "-o", str(obj)],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        objects.append(str(obj))
    exe = tmp_path / "main"
    proc = subprocess.run([gxx, "-std=c++11", *STRICT[1:], "-I", str(folder), "-I", str(KIT),
                           str(tmp_path / "main.cc"), *objects, "-o", str(exe)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    count, num_ops, length, _ = map(int, run(exe).split())
    assert count == num_ops == len(methods)
    assert length == manifest["segments"][0]["flash_bytes"]


# ---------------------------------------------------------------- a real exported cascade
#
# The C driver runs the real int8 segments through ctypes: its invoke callback runs a
# segment with LiteRT on the exact bytes the driver hands over, so the feature buffers
# travel through the C ping-pong buffers, unchanged, from segment to segment.

I8P = ctypes.POINTER(ctypes.c_int8)
INVOKE_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_int, I8P, I8P, I8P)


class CCascade(ctypes.Structure):
    _fields_ = [("num_segments", ctypes.c_int), ("num_classes", ctypes.c_int),
                ("thresholds_int8", ctypes.POINTER(ctypes.c_int16)),
                ("feature_buffers", I8P * 2), ("invoke", INVOKE_FN),
                ("invoke_ctx", ctypes.c_void_p)]


class CResult(ctypes.Structure):
    _fields_ = [("label", ctypes.c_int), ("exit_index", ctypes.c_int),
                ("confidence", ctypes.c_int8), ("invoke_status", ctypes.c_int)]


def load_kit(out_dir):
    lib_path = Path(out_dir) / "libegt_cascade.so"
    proc = subprocess.run([GCC, *STRICT, "-shared", "-fPIC", "-I", str(KIT),
                           str(KIT / "egt_cascade.c"), "-o", str(lib_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lib = ctypes.CDLL(str(lib_path))
    lib.egt_cascade_run.argtypes = [ctypes.POINTER(CCascade), I8P, I8P, ctypes.POINTER(CResult)]
    lib.egt_cascade_run.restype = ctypes.c_int
    return lib


class LiteRTSegments:
    """The manifest's segments in LiteRT interpreters, addressed by the manifest's indices."""

    def __init__(self, folder, manifest):
        from ai_edge_litert.interpreter import Interpreter

        self.manifest = manifest
        self.interpreters = []
        for seg in manifest["segments"]:
            interp = Interpreter(model_path=str(Path(folder) / seg["file"]))
            interp.allocate_tensors()
            (inp,) = interp.get_input_details()
            assert list(inp["shape"]) == seg["input"]["shape"]
            assert inp["dtype"] == np.int8
            self.interpreters.append(interp)

    def run(self, k, x_int8):
        """Segment k (1-based) on an int8 input: (probabilities, features or None)."""
        seg, interp = self.manifest["segments"][k - 1], self.interpreters[k - 1]
        interp.set_tensor(interp.get_input_details()[0]["index"],
                          x_int8.reshape(seg["input"]["shape"]))
        interp.invoke()
        outputs = interp.get_output_details()
        probs = interp.get_tensor(outputs[seg["probabilities"]["output_index"]]["index"])
        assert list(probs.shape) == seg["probabilities"]["shape"] and probs.dtype == np.int8
        if seg["features"] is None:
            return probs.reshape(-1).copy(), None
        feats = interp.get_tensor(outputs[seg["features"]["output_index"]]["index"])
        assert list(feats.shape) == seg["features"]["shape"] and feats.dtype == np.int8
        return probs.reshape(-1).copy(), feats.reshape(-1).copy()


def quantize_input(x, spec):
    q = np.round(np.asarray(x, np.float64) / spec["scale"]) + spec["zero_point"]
    return np.clip(q, -128, 127).astype(np.int8)


@pytest.fixture(scope="module")
def real_deploy(tmp_path_factory):
    import keras

    import keras_egt as egt
    from keras_egt import export
    from kit import blob_task

    x, y = blob_task(n=160, size=32, channels=2, num_classes=3, seed=5)
    keras.utils.set_random_seed(7)
    model = egt.EarlyExitCNN(3, (32, 32, 2), widths=(4, 8, 8, 8, 8))
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    model.fit(x[:96], y[:96], epochs=4, batch_size=32, verbose=0)
    folder = tmp_path_factory.mktemp("real") / "deploy"
    export.export_cascade(model, str(folder), representative_data=x[:64], threshold=0.9)
    manifest = json.loads((folder / "manifest.json").read_text())
    return folder, manifest, x[96:]


@pytest.fixture(scope="module")
def real_probs(real_deploy):
    """int8 inputs and every segment's int8 probabilities, (n, S, C), with LiteRT."""
    folder, manifest, x = real_deploy
    segments = LiteRTSegments(folder, manifest)
    inputs, tables = [], []
    for sample in x:
        q = quantize_input(sample, manifest["segments"][0]["input"]).reshape(-1)
        inputs.append(q)
        rows, h = [], q
        for k in range(1, len(manifest["segments"]) + 1):
            probs, h = segments.run(k, h)
            rows.append(probs)
        tables.append(rows)
    return np.array(inputs), np.array(tables, dtype=np.int64)


@needs_gcc
def test_real_export_c_sources(real_deploy, tmp_path):
    folder, manifest, _ = real_deploy
    for name in ("model_data.c", "model_data.h", "egt_manifest.h"):
        assert (folder / name).is_file(), f"export_cascade did not write {name}"
    exe = build_host_test(folder, tmp_path)
    assert_arrays_equal_files(exe, folder, manifest, tmp_path)
    assert_info_matches(exe, manifest)


@needs_gcc
def test_real_export_c_decisions_equal_python(real_deploy, real_probs, tmp_path):
    folder, manifest, _ = real_deploy
    _, tables = real_probs
    segs = manifest["segments"]
    py_threshold = python_threshold_int8()
    # The manifest's thresholds are Python's int8_threshold of the float thresholds.
    for seg, t in zip(segs[:-1], manifest["thresholds"]):
        p = seg["probabilities"]
        assert seg["threshold_int8"] == ref_threshold_int8(t, p["scale"], p["zero_point"])
        assert seg["threshold_int8"] == int(py_threshold(t, p["scale"], p["zero_point"]))
    exe = build_host_test(folder, tmp_path)
    thresholds = [s["threshold_int8"] for s in segs[:-1]] + [-128]
    # The export's thresholds, then sweeps that make every exit fire on this data.
    sweeps = [thresholds] + [[int(v)] * len(segs) for v in np.percentile(tables.max(2), [10, 50, 90])]
    for thr in sweeps:
        out = _run_cascade(host_test=exe, path=tmp_path / "real.txt", tables=tables,
                           thresholds=thr, fails=np.zeros(len(tables), int))
        expected = np.array([ref_cascade(t, thr, 0) for t in tables])
        assert (out[:, 6] == 0).all()
        np.testing.assert_array_equal(out[:, :6], expected)
    # Decisions per exit on the real probabilities, with the export's thresholds.
    flat = tables[:, :-1].reshape(-1, tables.shape[2])
    thr_flat = np.tile(thresholds[:-1], len(tables))
    lines = [f"{len(flat)} {flat.shape[1]}"] + [
        " ".join(map(str, [t, *row])) for t, row in zip(thr_flat, flat)
    ]
    (tmp_path / "decide.txt").write_text("\n".join(lines) + "\n")
    got = [int(line.split()[0]) for line in run(exe, "decide", tmp_path / "decide.txt").splitlines()]
    assert got == [ref_should_exit(row, t) for row, t in zip(flat, thr_flat)]


@needs_gcc
def test_c_driver_runs_the_real_segments(real_deploy, real_probs, tmp_path):
    folder, manifest, _ = real_deploy
    inputs, tables = real_probs
    segs = manifest["segments"]
    segments = LiteRTSegments(folder, manifest)
    lib = load_kit(tmp_path)
    biggest = max(math.prod(s["features"]["shape"]) for s in segs[:-1])
    buffers = [np.zeros(biggest, np.int8), np.zeros(biggest, np.int8)]
    calls = []

    def invoke(ctx, k, inp, probs, feats):
        seg = segs[k - 1]
        x = np.ctypeslib.as_array(inp, shape=(math.prod(seg["input"]["shape"]),)).copy()
        p, f = segments.run(k, x)
        calls.append(k)
        np.ctypeslib.as_array(probs, shape=(len(p),))[:] = p
        if bool(feats) != (f is not None):
            return 99
        if f is not None:
            np.ctypeslib.as_array(feats, shape=(len(f),))[:] = f
        return 0

    callback = INVOKE_FN(invoke)  # kept alive for the C calls below
    for thr in ([s["threshold_int8"] for s in segs[:-1]] + [-128],
                [int(np.median(tables.max(2)))] * len(segs)):
        thresholds = (ctypes.c_int16 * len(segs))(*thr)
        cascade = CCascade(len(segs), manifest["num_classes"], thresholds,
                           (I8P * 2)(*[b.ctypes.data_as(I8P) for b in buffers]), callback, None)
        probs = np.zeros(manifest["num_classes"], np.int8)
        for x, table in zip(inputs, tables):
            calls.clear()
            result = CResult()
            rc = lib.egt_cascade_run(ctypes.byref(cascade), x.ctypes.data_as(I8P),
                                     probs.ctypes.data_as(I8P), ctypes.byref(result))
            expected = ref_cascade(table, thr, 0)
            got = (rc, result.label, result.exit_index, result.confidence, len(calls),
                   result.invoke_status)
            assert got == expected
            assert calls == list(range(1, expected[2] + 1))
