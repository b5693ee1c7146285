"""Running an exported int8 cascade: LiteRT and TensorFlow Lite Micro, batch 1.

Needs `ai-edge-litert` or `tflite-micro` (not TensorFlow), so a deploy folder runs on
any Keras backend.
"""

import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from keras_egt.cascade import first_exit, should_exit
from keras_egt.export import _deps

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
RUNTIMES = ("tflm", "litert")
CRITERION = "max_probability"


def int8_threshold(threshold, scale, zero_point):
    """A probability threshold in the int8 domain of a softmax output.

    Exit k fires iff `max_i q_i >= int8_threshold(t, scale, zero_point)`, where q
    are the int8 probabilities: `ceil(t / scale + zero_point)`, clamped to
    [-128, 128]. 128 never fires (t above every representable probability), -128
    always fires. For TFLite's int8 softmax (scale 1/256, zero point -128) and
    t = 0.9: `ceil(230.4 - 128) = 103`, i.e. p >= 231/256.

    Args:
        threshold: the probability threshold t (any finite number; above 1 never
            exits, 0 or below always does).
        scale: scale of the int8 probabilities.
        zero_point: their zero point.

    Returns:
        An int in [-128, 128].

    Example:
    >>> int8_threshold(0.9, 1 / 256, -128)
    103
    """
    threshold, scale = float(threshold), float(scale)
    if math.isnan(threshold):
        raise ValueError("threshold must be a number, got NaN.")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive number, got {scale}.")
    if math.isinf(threshold):
        return 128 if threshold > 0 else -128
    return int(min(max(math.ceil(threshold / scale + int(zero_point)), -128), 128))


def decide_int8(probabilities, thresholds_int8):
    """The cascade's decisions from every segment's int8 probabilities.

    Sample i leaves at the first segment k < K with `max(q_k) >= thresholds_int8[k]`,
    else at segment K; its label is the argmax there: `keras_egt.cascade`'s exit
    rule (max-probability criterion) in the int8 domain. This is what
    `CascadeRunner.predict` and `egt_cascade_run` (C) compute while stopping early.

    Args:
        probabilities: int8 array `(K, n, num_classes)`.
        thresholds_int8: K - 1 or K ints (a K-th is ignored; the last always exits).

    Returns:
        `(labels, exits)`: int64 arrays `(n,)`, exits 0-based.
    """
    q = np.asarray(probabilities)
    num_segments = q.shape[0]
    limits = np.asarray(list(thresholds_int8)[: num_segments - 1], np.int32)
    exits = first_exit(q[:-1].max(axis=-1).astype(np.int32) >= limits[:, None])
    labels = np.argmax(q, axis=-1)[exits, np.arange(q.shape[1])].astype(np.int64)
    return labels, exits


def quantize(x, scale, zero_point):
    """Float to int8 as TFLite's QUANTIZE does: round half away from zero, saturate."""
    v = np.asarray(x, np.float32) / np.float32(scale)
    v = np.sign(v) * np.floor(np.abs(v) + 0.5)
    return np.clip(v + int(zero_point), -128, 127).astype(np.int8)


def dequantize(q, scale, zero_point):
    return (np.asarray(q, np.float32) - int(zero_point)) * np.float32(scale)


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def read_manifest(deploy_dir):
    """Reads and sanity-checks `manifest.json` of a deploy folder.

    Args:
        deploy_dir: a folder written by `export_cascade`.

    Returns:
        The manifest dict.
    """
    path = os.path.join(os.fspath(deploy_dir), MANIFEST)
    if not os.path.isdir(deploy_dir):
        raise FileNotFoundError(f"deploy folder not found: {os.fspath(deploy_dir)!r}.")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path!r} not found: not a deploy folder written by keras_egt.export.export_cascade."
        )
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path!r} is not valid JSON ({error}); re-export the model.") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path!r} has format_version {manifest.get('format_version') if isinstance(manifest, dict) else None!r}; "
            f"this keras_egt reads version {FORMAT_VERSION}. Re-export the model."
        )
    if manifest.get("criterion", CRITERION) != CRITERION:
        raise ValueError(f"{path!r}: unknown exit criterion {manifest.get('criterion')!r}.")
    segments = manifest.get("segments")
    if not isinstance(segments, list) or not segments:
        raise ValueError(f"{path!r} lists no segments; re-export the model.")
    for k, seg in enumerate(segments, start=1):
        for key in ("file", "sha256", "flash_bytes", "arena_bytes", "input", "probabilities",
                    "features", "threshold_int8"):
            if key not in seg:
                raise ValueError(f"{path!r}: segment {k} has no {key!r}; re-export the model.")
    for k in range(1, len(segments)):
        out, nxt = segments[k - 1]["features"], segments[k]["input"]
        if out is None or any(out[key] != nxt[key] for key in ("shape", "scale", "zero_point")):
            raise ValueError(
                f"{path!r}: segment {k}'s features and segment {k + 1}'s input differ in "
                "shape or quantization, so the int8 handoff would be wrong. Re-export the model."
            )
    return manifest


def read_segment(deploy_dir, seg):
    """The bytes of one segment file, after checking its size and sha256 against the manifest."""
    path = os.path.join(os.fspath(deploy_dir), seg["file"])
    if os.path.basename(seg["file"]) != seg["file"]:
        raise ValueError(f"manifest: segment file {seg['file']!r} must be a plain file name.")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"segment {seg['index']}: {path!r} not found.")
    with open(path, "rb") as f:
        data = f.read()
    digest = sha256(data)
    if digest != seg["sha256"] or len(data) != seg["flash_bytes"]:
        raise ValueError(
            f"segment {seg['index']}: {path!r} does not match the manifest (sha256 "
            f"{digest[:16]}..., {len(data)} bytes; manifest: {str(seg['sha256'])[:16]}..., "
            f"{seg['flash_bytes']} bytes). The file was modified or comes from another "
            "export; refusing to run it. Re-export the model."
        )
    return data


def _check_tensor(detail, spec, where):
    shape = [int(d) for d in detail["shape"]]
    scales = np.atleast_1d(detail["scales"])
    zero_points = np.atleast_1d(detail["zero_points"])
    ok = (
        np.dtype(detail["dtype"]) == np.int8
        and shape == list(spec["shape"])
        and len(scales) == 1 and np.float32(scales[0]) == np.float32(spec["scale"])
        and int(zero_points[0]) == int(spec["zero_point"])
    )
    if not ok:
        raise ValueError(
            f"{where} is {np.dtype(detail['dtype']).name} {shape} (scale "
            f"{scales.tolist()}, zero point {zero_points.tolist()}), the manifest says int8 "
            f"{spec['shape']} (scale {spec['scale']}, zero point {spec['zero_point']}): the "
            "file does not belong to this manifest. Re-export the model."
        )


class _LiteRTSegment:
    """One segment on the LiteRT interpreter."""

    def __init__(self, data, seg, num_threads=None):
        litert = _deps.require("ai_edge_litert.interpreter", "the LiteRT runtime")
        self.interpreter = litert.Interpreter(model_content=data, num_threads=num_threads)
        self.interpreter.allocate_tensors()
        inputs = self.interpreter.get_input_details()
        outputs = self.interpreter.get_output_details()
        where = f"segment {seg['index']} ({seg['file']})"

        def detail(d):
            q = d["quantization_parameters"]
            return {"dtype": d["dtype"], "shape": d["shape"], "scales": q["scales"],
                    "zero_points": q["zero_points"]}

        expected = 1 if seg["features"] is None else 2
        if len(inputs) != 1 or len(outputs) != expected:
            raise ValueError(f"{where} has {len(inputs)} inputs and {len(outputs)} outputs; "
                             f"expected 1 and {expected}. Re-export the model.")
        _check_tensor(detail(inputs[0]), seg["input"], f"{where} input")
        self.input = inputs[0]["index"]
        p = seg["probabilities"]["output_index"]
        _check_tensor(detail(outputs[p]), seg["probabilities"], f"{where} probabilities")
        self.probabilities = outputs[p]["index"]
        self.features = None
        if seg["features"] is not None:
            f = seg["features"]["output_index"]
            _check_tensor(detail(outputs[f]), seg["features"], f"{where} features")
            self.features = outputs[f]["index"]

    def __call__(self, q):
        self.interpreter.set_tensor(self.input, q)
        self.interpreter.invoke()
        probabilities = self.interpreter.get_tensor(self.probabilities)[0]
        if self.features is None:
            return probabilities, None
        return probabilities, self.interpreter.get_tensor(self.features)


class _TFLMSegment:
    """One segment on the TensorFlow Lite Micro interpreter, in its manifest arena."""

    def __init__(self, data, seg, arena_bytes=None):
        tflm = _deps.require("tflite_micro.python.tflite_micro.runtime", "the TFLM runtime")
        where = f"segment {seg['index']} ({seg['file']})"
        arena = int(arena_bytes if arena_bytes is not None else seg["arena_bytes"])
        native = []
        try:
            with _deps.captured_native_output(native):
                self.interpreter = tflm.Interpreter.from_bytes(data, arena_size=arena)
        except Exception as error:
            raise RuntimeError(
                f"{where}: TFLM could not allocate it in {arena} bytes of arena: {error}. "
                + " ".join("".join(native).split())[-300:]
            ) from error

        def detail(d):
            q = d["quantization_parameters"]
            return {"dtype": d["dtype"], "shape": d["shape"], "scales": q["scales"],
                    "zero_points": q["zero_points"]}

        _check_tensor(detail(self.interpreter.get_input_details(0)), seg["input"], f"{where} input")
        self.probabilities = seg["probabilities"]["output_index"]
        _check_tensor(detail(self.interpreter.get_output_details(self.probabilities)),
                      seg["probabilities"], f"{where} probabilities")
        self.features = None
        if seg["features"] is not None:
            self.features = seg["features"]["output_index"]
            _check_tensor(detail(self.interpreter.get_output_details(self.features)),
                          seg["features"], f"{where} features")

    def __call__(self, q):
        self.interpreter.set_input(q, 0)
        self.interpreter.invoke()
        probabilities = np.array(self.interpreter.get_output(self.probabilities))[0]
        if self.features is None:
            return probabilities, None
        return probabilities, np.array(self.interpreter.get_output(self.features))


def tflm_arena_bytes(model_bytes, input_shape, input_zero_point=0, return_recorded=False):
    """The TFLM arena a model needs, measured with TFLM's recording allocator.

    TFLM's Python interpreter allocates with the `RecordingMicroAllocator`; its
    "Arena allocation total" (head + tail once allocation is done) is read after one
    invocation. Allocation also needs temporary memory on the way (the memory
    planner's scratch), which that total leaves out and which dominates for small
    segments, so the result is the smallest arena in which TFLM actually allocates
    the model: the recorded total, raised by bisection where needed, and verified by
    running the model in exactly that many bytes. The probes run in a child process
    (`_arena_probe.py`): TFLM can crash, rather than fail, in an arena a few bytes
    too small.

    Args:
        model_bytes: the `.tflite` flatbuffer.
        input_shape: the int8 input's shape (with batch).
        input_zero_point: the input value fed for the check.
        return_recorded: also return the recording allocator's total.

    Returns:
        The arena bytes (host build; a 32-bit MCU needs about the same or slightly
        less, since TFLM's structs hold pointers), or `(bytes, recorded)`.
    """
    _deps.require("tflite_micro.python.tflite_micro.runtime", "measuring the TFLM arena")
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_arena_probe.py")
    shape = ",".join(str(int(d)) for d in input_shape)
    low, high, recorded, verified = -1, 0, 0, None
    with tempfile.TemporaryDirectory(prefix="keras_egt_arena_") as work:
        path = os.path.join(work, "model.tflite")
        with open(path, "wb") as f:
            f.write(model_bytes)
        for _ in range(64):
            process = subprocess.run(
                [sys.executable, script, path, str(int(input_zero_point)), shape, str(low),
                 str(high), str(recorded)],
                stdin=subprocess.DEVNULL, capture_output=True, text=True,
            )
            trying = None
            for line in process.stdout.split("\n"):
                word, _, value = line.partition(" ")
                if word == "recorded":
                    recorded = int(value)
                elif word == "try":
                    trying = int(value)
                elif word == "ok":
                    high, trying = int(value), None
                elif word == "fail":
                    low, trying = max(low, int(value)), None
                elif word == "verified":
                    verified = int(value)
            if verified is not None:
                break
            if trying is None or process.returncode >= 0:
                raise RuntimeError(
                    "measuring the TFLM arena failed: "
                    + " ".join((process.stderr or process.stdout).split())[-400:]
                )
            low = max(low, trying)  # TFLM crashed: that arena is too small
    if verified is None:
        raise RuntimeError("measuring the TFLM arena did not converge.")
    return (verified, recorded) if return_recorded else verified


class CascadeRunner:
    """An exported int8 cascade, run segment by segment on LiteRT or TFLM (batch 1).

    For each sample: quantize the input with segment 1's parameters, run segment 1;
    if `max(q_1) >= threshold_int8[1]` leave with `argmax(q_1)`, else pass segment
    1's int8 features unchanged to segment 2, and so on; the last segment always exits.
    This is the firmware's logic (`tflite/egt_cascade.c`).

    Use `load_cascade` to make one. Attributes: `manifest`, `runtime`,
    `deploy_dir`, `num_classes`, `input_shape`, `thresholds_int8`, and after
    `predict` `last_seconds` (wall time per sample).
    """

    def __init__(self, deploy_dir, runtime="tflm", num_threads=None):
        if runtime not in RUNTIMES:
            raise ValueError(f"Unknown runtime {runtime!r}; use one of {RUNTIMES}.")
        self.deploy_dir = os.fspath(deploy_dir)
        self.runtime = runtime
        self.manifest = read_manifest(deploy_dir)
        segments = self.manifest["segments"]
        blobs = [read_segment(deploy_dir, seg) for seg in segments]
        if runtime == "litert":
            self._segments = [_LiteRTSegment(b, s, num_threads) for b, s in zip(blobs, segments)]
        else:
            self._segments = [_TFLMSegment(b, s) for b, s in zip(blobs, segments)]
        self.num_classes = int(self.manifest["num_classes"])
        self.input_shape = tuple(self.manifest["input_shape"])
        self.thresholds_int8 = [seg["threshold_int8"] for seg in segments]
        self.last_seconds = None

    @property
    def num_segments(self):
        return len(self._segments)

    def quantize_input(self, x):
        """Float inputs `(n, H, W, C)` (preprocessed as in training) to int8."""
        x = np.asarray(x)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"x must have shape (n, {', '.join(map(str, self.input_shape))}), got "
                f"{x.shape}: the cascade was exported for inputs {self.input_shape}."
            )
        if x.dtype == np.int8:
            return x
        if not np.all(np.isfinite(x)):
            raise ValueError("x holds NaN or Inf values.")
        spec = self.manifest["segments"][0]["input"]
        return quantize(x, spec["scale"], spec["zero_point"])

    def predict(self, x):
        """Classifies `x` with the int8 cascade, one sample at a time.

        Args:
            x: float inputs `(n, H, W, C)` preprocessed as in training (or int8 inputs
                already quantized with segment 1's input parameters).

        Returns:
            `(labels, exits)`: int64 arrays `(n,)`; exits 0-based (0 = exit 1), as
            `keras_egt.cascade.Cascade.predict`.

        Example:
        >>> labels, exits = load_cascade("deploy/", runtime="tflm").predict(x_test)
        """
        q = self.quantize_input(x)
        labels = np.zeros(len(q), np.int64)
        exits = np.zeros(len(q), np.int64)
        seconds = np.zeros(len(q))
        last = self.num_segments - 1
        for i in range(len(q)):
            start = time.perf_counter()
            h = q[i : i + 1]
            for k, segment in enumerate(self._segments):
                probabilities, h = segment(h)
                if k == last or should_exit(probabilities, self.thresholds_int8[k]):
                    labels[i], exits[i] = int(np.argmax(probabilities)), k
                    break
            seconds[i] = time.perf_counter() - start
        self.last_seconds = seconds
        return labels, exits

    def run_segments(self, x):
        """Every segment's int8 probabilities for every sample (no early exit).

        Args:
            x: inputs as for `predict`.

        Returns:
            An int8 array `(num_segments, n, num_classes)`; `decide_int8(result,
            runner.thresholds_int8)` equals `predict(x)`.
        """
        q = self.quantize_input(x)
        out = np.zeros((self.num_segments, len(q), self.num_classes), np.int8)
        seconds = np.zeros(len(q))
        for i in range(len(q)):
            start = time.perf_counter()
            h = q[i : i + 1]
            for k, segment in enumerate(self._segments):
                out[k, i], h = segment(h)
            seconds[i] = time.perf_counter() - start
        self.last_seconds = seconds
        return out

    def probabilities(self, int8_probabilities):
        """Dequantizes `run_segments` output to float probabilities `(K, n, C)`."""
        return np.stack([
            dequantize(q, seg["probabilities"]["scale"], seg["probabilities"]["zero_point"])
            for q, seg in zip(int8_probabilities, self.manifest["segments"])
        ])

    def report(self):
        """Flash, TFLM arena, MACs, thresholds and ops per segment, as a markdown table."""
        return format_report(self.manifest, title=f"{self.deploy_dir} (runtime: {self.runtime})")

    def __repr__(self):
        return (f"CascadeRunner({self.deploy_dir!r}, runtime={self.runtime!r}, "
                f"segments={self.num_segments}, thresholds_int8={self.thresholds_int8})")


def format_report(manifest, title="int8 cascade"):
    """The markdown report of a manifest (see `CascadeRunner.report`)."""
    segments = manifest["segments"]
    shape = "x".join(str(d) for d in manifest["input_shape"])
    first = segments[0]["input"]
    lines = [
        f"### EGT int8 cascade: {title}",
        "",
        f"{manifest['num_classes']} classes, input {shape} int8 (scale {first['scale']:.6g}, "
        f"zero point {first['zero_point']}), criterion {manifest.get('criterion', CRITERION)}, "
        f"keras_egt {manifest.get('keras_egt_version', '?')}.",
        "",
        "| segment | flash bytes | TFLM arena bytes | MACs | threshold | threshold_int8 | features (scale, zp) | ops |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    thresholds = manifest.get("thresholds") or [None] * len(segments)
    for seg, t in zip(segments, thresholds):
        last = seg["features"] is None
        feat = "-" if last else (
            f"{'x'.join(map(str, seg['features']['shape'][1:]))} "
            f"({seg['features']['scale']:.6g}, {seg['features']['zero_point']})"
        )
        lines.append(
            f"| {seg['index']} | {seg['flash_bytes']:,} | {seg['arena_bytes']:,} | "
            f"{seg.get('macs', 0):,} | {'always' if last or t is None else f'{t:g}'} | "
            f"{'-' if seg['threshold_int8'] is None else seg['threshold_int8']} | {feat} | "
            f"{', '.join(sorted(set(seg.get('ops', []))))} |"
        )
    flash = sum(seg["flash_bytes"] for seg in segments)
    arena = max(seg["arena_bytes"] for seg in segments)
    lines += [
        "",
        f"Total flash {flash:,} bytes ({flash / 1024:.1f} KiB); one shared TFLM arena "
        f"{arena:,} bytes ({arena / 1024:.1f} KiB, the largest segment's).",
    ]
    return "\n".join(lines)


def load_cascade(deploy_dir, runtime="tflm", num_threads=None):
    """Loads an exported int8 cascade for inference on LiteRT or TFLM.

    Every segment file is checked against the manifest (sha256, size, input/output
    shapes and quantization) and refused with a clear error if it differs.

    Args:
        deploy_dir: a folder written by `export_cascade`.
        runtime: `"tflm"` (TensorFlow Lite Micro's Python interpreter, each segment
            in an arena of its manifest size) or `"litert"` (`ai-edge-litert`).
        num_threads: LiteRT threads (default: its own).

    Returns:
        A `CascadeRunner`.

    Example:
    >>> runner = load_cascade("deploy/", runtime="tflm")
    >>> labels, exits = runner.predict(x_test)
    >>> print(runner.report())
    """
    return CascadeRunner(deploy_dir, runtime=runtime, num_threads=num_threads)
