"""`load_cascade` and `CascadeRunner`: a deploy folder run segment by segment, batch 1.

Every segment file is checked against the manifest before it runs; on TFLM, each one
is first allocated and run in its arena in a child process (`runtime.arena`).
"""

import os
import time

import numpy as np

from keras_egt.checks import check_image_dtype
from keras_egt.exit_rule import int8_thresholds, should_exit
from keras_egt.export.manifest import CRITERION, load_manifest, read_segment
from keras_egt.export.runtime.arena import probe_tflm
from keras_egt.export.runtime.int8 import dequantize, quantize
from keras_egt.export.runtime.interpreters import _LiteRTSegment, _TFLMSegment

RUNTIMES = ("tflm", "litert")


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
        self.manifest = load_manifest(deploy_dir)
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
