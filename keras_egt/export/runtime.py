"""Running an exported int8 cascade: LiteRT and TensorFlow Lite Micro, batch 1.

Needs `ai-edge-litert` or `tflite-micro` (not TensorFlow), so a deploy folder runs on
any Keras backend.
"""

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from keras_egt.checks import check_image_dtype
from keras_egt.exit_rule import (  # noqa: F401  (int8_threshold re-exported)
    first_exit,
    int8_threshold,
    int8_thresholds,
    should_exit,
)
from keras_egt.export import _deps, _lifetime
from keras_egt.export.manifest import (  # noqa: F401  (re-exported names)
    CRITERION,
    FORMAT_VERSION,
    MANIFEST,
    load_manifest,
    read_segment,
)

RUNTIMES = ("tflm", "litert")
# Temporary folders of tflm_arena_bytes, tagged with the pid (see _lifetime.remove_stale).
ARENA_TMP_PATTERN = r"keras_egt_arena_(\d+)_.*"


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
    """Reads and validates `manifest.json` of a deploy folder.

    See `keras_egt.export.manifest.load_manifest`: every field, the cross-checks
    and the manifest's digest are checked; any inconsistency raises a ValueError
    naming the field.

    Args:
        deploy_dir: a folder written by `export_cascade`.

    Returns:
        The manifest dict.
    """
    return load_manifest(deploy_dir)


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
        # Without the default XNNPACK delegate: its int8 kernels round some conv,
        # logistic and mul results one step off TFLM's, and a one-step difference in
        # the features can move a sample's exit (benchmarks/runtime_agreement.py,
        # tflite/README.md). LiteRT's own optimized kernels match TFLM's features.
        self.interpreter = litert.Interpreter(
            model_content=data, num_threads=num_threads,
            experimental_op_resolver_type=litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        )
        self.interpreter.allocate_tensors()
        inputs = self.interpreter.get_input_details()
        outputs = self.interpreter.get_output_details()
        where = f"segment {seg['index']} ({seg['file']})"

        def detail(d):
            q = d["quantization_parameters"]
            return {"dtype": d["dtype"], "shape": d["shape"], "scales": q["scales"],
                    "zero_points": q["zero_points"]}

        expected = 1 if seg["features"] is None else 2
        indices = {seg["probabilities"]["output_index"]}
        if seg["features"] is not None:
            indices.add(seg["features"]["output_index"])
        if len(inputs) != 1 or len(outputs) != expected or max(indices) >= len(outputs):
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


# (sha256, arena bytes) pairs that TFLM allocated and ran in a child process.
_PROBED = set()


class _Prober:
    """A long-lived `_arena_probe.py --serve` child (started on first use, restarted
    after a crash), so that checking a segment costs no process start."""

    def __init__(self):
        self.process = None
        self.lock = threading.Lock()

    def run(self, job):
        """Sends one job line; returns (its output lines, the exit code if it died, stderr)."""
        with self.lock:
            if self.process is None or self.process.poll() is not None:
                script = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                      "_arena_probe.py")
                self.process = subprocess.Popen(
                    [sys.executable, script, "--serve"], stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1,
                    env=_lifetime.child_env(),
                )
            process, lines = self.process, []
            try:
                process.stdin.write(job.replace("\n", " ") + "\n")
                process.stdin.flush()
                for line in process.stdout:
                    line = line.rstrip("\n")
                    if line == "done":
                        return lines, None, ""
                    lines.append(line)
            except (BrokenPipeError, OSError):
                pass
            returncode = process.wait()  # it died mid-job: a crash
            self.process = None
            return lines, returncode, ""


_PROBER = _Prober()


def probe_tflm(deploy_dir, segments, arenas):
    """Allocates and runs each segment in its arena in a child process first.

    TFLM's Python interpreter can crash the process (a segmentation fault, not an
    exception) when the arena is too small or the flatbuffer is malformed, and a
    manifest's `arena_bytes` or a segment file can be edited along with every digest
    (see `keras_egt.export.manifest`). So every (file, arena) pair is tried once per
    process in `_arena_probe.py --check`, which runs LiteRT's flatbuffer verifier on
    the very bytes it hands TFLM; a refusal or a crash there becomes an error here.

    Args:
        deploy_dir: the deploy folder.
        segments: manifest entries of the segments to check.
        arenas: the arena bytes of each.

    Raises:
        ValueError: an arena below the recorded one (before TFLM is touched).
        RuntimeError: naming the segment, the arena and what TFLM or the verifier said.
    """
    for seg, arena in zip(segments, arenas):
        if int(arena) < seg["arena_recorded_bytes"]:
            raise ValueError(
                f"segment {seg['index']}: an arena of {int(arena)} bytes is below the "
                f"{seg['arena_recorded_bytes']} bytes TFLM's recording allocator recorded for "
                "it; refusing before TFLM touches it."
            )
    # Absolute: the long-lived child keeps the working directory it was started in.
    _probe([{"path": os.path.abspath(os.path.join(os.fspath(deploy_dir), seg["file"])),
             "sha256": seg["sha256"], "arena": int(arena),
             "zero_point": seg["input"]["zero_point"], "shape": seg["input"]["shape"],
             "outputs": [seg["probabilities"]["output_index"]]
             + ([] if seg["features"] is None else [seg["features"]["output_index"]]),
             "where": f"segment {seg['index']} ({seg['file']})"}
            for seg, arena in zip(segments, arenas)])


def probe_tflm_file(path, arena_bytes, input_shape, input_zero_point=0, num_outputs=1,
                    where=None):
    """Checks one `.tflite` file on TFLM as `probe_tflm` checks a segment; returns its bytes.

    For a model outside a deploy folder (e.g. `final_only.tflite`): hand the bytes
    returned to `tflm_interpreter`, which takes no other.

    Args:
        path: the `.tflite` file.
        arena_bytes: the arena to allocate it in.
        input_shape: its int8 input's shape (with batch).
        input_zero_point: the input value fed for the check.
        num_outputs: its outputs (each one's details are read).
        where: what to call it in errors (default: the file's name).

    Returns:
        The file's bytes, verified and run by the probe child.

    Example:
    >>> data = probe_tflm_file("deploy/final_only.tflite", 20000, (1, 32, 32, 2), -1)
    >>> interpreter = tflm_interpreter(data, 20000, "the final-only model")
    """
    with open(path, "rb") as f:
        data = f.read()
    _probe([{"path": os.path.abspath(os.fspath(path)), "sha256": sha256(data),
             "arena": int(arena_bytes), "zero_point": int(input_zero_point),
             "shape": [int(d) for d in input_shape], "outputs": list(range(int(num_outputs))),
             "where": where or repr(os.path.basename(os.fspath(path)))}])
    return data


def _probe(items):
    """Runs the not yet probed `items` (job entries with a `where`) in the probe child."""
    todo = [item for item in items if (item["sha256"], item["arena"]) not in _PROBED]
    if not todo:
        return
    job = [dict(item, index=i) for i, item in enumerate(todo, 1)]
    lines, returncode, stderr = _PROBER.run(json.dumps(job))
    done = {}
    current = None
    for line in lines:
        word, _, rest = line.partition(" ")
        if word == "try":
            current = int(rest)
        elif word in ("ok", "fail"):
            index, _, message = rest.partition(" ")
            done[int(index)] = (word, message)
            current = None
        elif word == "error":
            stderr = rest
    for item in job:
        word, message = done.get(item["index"], (None, ""))
        where, arena = item["where"], item["arena"]
        if word == "ok":
            _PROBED.add((item["sha256"], arena))
            continue
        if word == "fail":
            raise RuntimeError(f"{where}: TFLM could not allocate or run it in {arena} bytes of "
                               f"arena: {message[-300:]}")
        crashed = returncode is not None and (current == item["index"] or returncode < 0)
        if crashed:
            raise RuntimeError(
                f"{where}: TFLM crashed (exit code {returncode}) allocating it in "
                f"{arena} bytes of arena; the manifest's arena_bytes is too small or the "
                "file is malformed. Refusing it; re-export the model."
            )
        raise RuntimeError(f"{where}: checking it on TFLM failed: "
                           + " ".join((stderr or "").split())[-400:])


def tflm_interpreter(data, arena_bytes, where):
    """A TFLM interpreter of `data` in `arena_bytes`, if the probe child ran these very bytes.

    The one door to TFLM's Python interpreter in this process: TFLM runs no flatbuffer
    verifier, so it gets only bytes whose sha256 the probe child verified with LiteRT
    and ran in that arena (`probe_tflm`, `probe_tflm_file`).

    Args:
        data: the `.tflite` bytes.
        arena_bytes: the arena size.
        where: what to call the model in errors, e.g. "segment 1 (segment_1.tflite)".

    Returns:
        A `tflite_micro` interpreter.

    Raises:
        RuntimeError: the bytes were not probed in that arena, or TFLM refused them.

    Example:
    >>> interpreter = tflm_interpreter(read_segment("deploy", seg), seg["arena_bytes"],
    ...                                "segment 1")
    """
    tflm = _deps.require("tflite_micro.python.tflite_micro.runtime", "the TFLM runtime")
    arena = int(arena_bytes)
    if (sha256(data), arena) not in _PROBED:
        raise RuntimeError(
            f"{where}: these bytes were not verified and run on TFLM in {arena} bytes of arena "
            "first; refusing to hand them to TFLM. Check them with probe_tflm (or "
            f"probe_tflm_file) first. Received: sha256 {sha256(data)[:16]}..., arena {arena}."
        )
    native = []
    try:
        with _deps.captured_native_output(native):
            return tflm.Interpreter.from_bytes(data, arena_size=arena)
    except Exception as error:
        raise RuntimeError(
            f"{where}: TFLM could not allocate it in {arena} bytes of arena: {error}. "
            + " ".join("".join(native).split())[-300:]
        ) from error


class _TFLMSegment:
    """One segment on the TensorFlow Lite Micro interpreter, in its manifest arena."""

    def __init__(self, data, seg, arena_bytes=None):
        where = f"segment {seg['index']} ({seg['file']})"
        arena = int(arena_bytes if arena_bytes is not None else seg["arena_bytes"])
        self.interpreter = tflm_interpreter(data, arena, where)

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
    too small. That child hands TFLM only bytes of the sha256 given and accepted by
    LiteRT's flatbuffer verifier, as every path to TFLM does (see `tflm_interpreter`).

    Args:
        model_bytes: the `.tflite` flatbuffer.
        input_shape: the int8 input's shape (with batch).
        input_zero_point: the input value fed for the check.
        return_recorded: also return the recording allocator's total.

    Returns:
        The arena bytes (host build; a 32-bit MCU needs about the same or slightly
        less, since TFLM's structs hold pointers), or `(bytes, recorded)`.

    Raises:
        ValueError: LiteRT's verifier refuses the flatbuffer (before TFLM reads it).
        RuntimeError: TFLM cannot allocate or run it.

    Example:
    >>> tflm_arena_bytes(model_bytes, (1, 32, 32, 2), input_zero_point=-1)
    """
    _deps.require("tflite_micro.python.tflite_micro.runtime", "measuring the TFLM arena")
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_arena_probe.py")
    shape = ",".join(str(int(d)) for d in input_shape)
    low, high, recorded, verified = -1, 0, 0, None
    digest = sha256(model_bytes)  # the child verifies the bytes it reads (and LiteRT them)
    _lifetime.remove_stale(tempfile.gettempdir(), ARENA_TMP_PATTERN)
    with tempfile.TemporaryDirectory(prefix=f"keras_egt_arena_{os.getpid()}_") as work:
        path = os.path.join(work, "model.tflite")
        with open(path, "wb") as f:
            f.write(model_bytes)
        for _ in range(64):
            process = _lifetime.run_child(
                [sys.executable, script, path, digest, str(int(input_zero_point)), shape,
                 str(low), str(high), str(recorded)],
            )
            trying = None
            for line in process.stdout.split("\n"):
                word, _, value = line.partition(" ")
                if word == "invalid":
                    raise ValueError(f"measuring the TFLM arena: {value}")
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
    This is the firmware's logic (`keras_egt/export/kit/egt_cascade.c`).

    Use `load_cascade` to make one. Attributes: `manifest`, `runtime`,
    `deploy_dir`, `num_classes`, `input_shape`, `thresholds_int8`, and after
    `predict` `last_seconds` (wall time per sample).
    """

    def __init__(self, deploy_dir, runtime="tflm", num_threads=None, threshold=None):
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
            probe_tflm(deploy_dir, segments, [seg["arena_bytes"] for seg in segments])
            self._segments = [_TFLMSegment(b, s) for b, s in zip(blobs, segments)]
        self.num_classes = int(self.manifest["num_classes"])
        self.input_shape = tuple(self.manifest["input_shape"])
        self.thresholds_int8 = [seg["threshold_int8"] for seg in segments]
        if threshold is not None:
            self.thresholds_int8 = int8_thresholds(
                threshold, [(s["probabilities"]["scale"], s["probabilities"]["zero_point"])
                            for s in segments])
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
        check_image_dtype(x.dtype, "x")
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
                # should_exit takes a batch: this sample's (1, C) row.
                row = np.reshape(probabilities, (1, -1))
                if k == last or should_exit(row, self.thresholds_int8[k])[0]:
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


def load_cascade(deploy_dir, runtime="tflm", num_threads=None, threshold=None):
    """Loads an exported int8 cascade for inference on LiteRT or TFLM.

    Every segment file is checked against the manifest (sha256, size, input/output
    shapes and quantization) and refused with a clear error if it differs.

    Args:
        deploy_dir: a folder written by `export_cascade`.
        runtime: `"tflm"` (TensorFlow Lite Micro's Python interpreter, each segment
            in an arena of its manifest size) or `"litert"` (`ai-edge-litert`).
        num_threads: LiteRT threads (default: its own).
        threshold: None runs the exported thresholds; else probability threshold(s)
            as `Cascade` takes them (one number, one per early exit, or
            `calibrate_thresholds`' result), each turned into its segment's int8 test
            (`exit_rule.int8_thresholds`). The max-probability criterion only: the
            int8 test compares the largest int8 probability.

    Returns:
        A `CascadeRunner`.

    Example:
    >>> runner = load_cascade("deploy/", runtime="tflm")
    >>> labels, exits = runner.predict(x_test)
    >>> print(runner.report())
    """
    return CascadeRunner(deploy_dir, runtime=runtime, num_threads=num_threads,
                         threshold=threshold)
