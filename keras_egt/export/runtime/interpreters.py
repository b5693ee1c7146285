"""One segment of a deploy folder on LiteRT or on TFLM, checked against its manifest entry.

`tflm_interpreter` is the one door to TFLM's Python interpreter in this process: it
opens only bytes the probe child ran (`keras_egt.export.runtime.arena`).
"""

import numpy as np

from keras_egt.export import _deps
from keras_egt.export.manifest import sha256
from keras_egt.export.runtime.arena import probed


def _detail(d):
    """An interpreter's tensor details, as `_check_tensor` reads them (LiteRT's and TFLM's alike)."""
    q = d["quantization_parameters"]
    return {"dtype": d["dtype"], "shape": d["shape"], "scales": q["scales"],
            "zero_points": q["zero_points"]}


def _check_tensor(detail, spec, where):
    """Raises a ValueError unless a segment file's tensor is the manifest's `spec`."""
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
        expected = 1 if seg["features"] is None else 2
        indices = {seg["probabilities"]["output_index"]}
        if seg["features"] is not None:
            indices.add(seg["features"]["output_index"])
        if len(inputs) != 1 or len(outputs) != expected or max(indices) >= len(outputs):
            raise ValueError(f"{where} has {len(inputs)} inputs and {len(outputs)} outputs; "
                             f"expected 1 and {expected}. Re-export the model.")
        _check_tensor(_detail(inputs[0]), seg["input"], f"{where} input")
        self.input = inputs[0]["index"]
        p = seg["probabilities"]["output_index"]
        _check_tensor(_detail(outputs[p]), seg["probabilities"], f"{where} probabilities")
        self.probabilities = outputs[p]["index"]
        self.features = None
        if seg["features"] is not None:
            f = seg["features"]["output_index"]
            _check_tensor(_detail(outputs[f]), seg["features"], f"{where} features")
            self.features = outputs[f]["index"]

    def __call__(self, q):
        self.interpreter.set_tensor(self.input, q)
        self.interpreter.invoke()
        probabilities = self.interpreter.get_tensor(self.probabilities)[0]
        if self.features is None:
            return probabilities, None
        return probabilities, self.interpreter.get_tensor(self.features)


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
    digest = sha256(data)
    if not probed(digest, arena):
        raise RuntimeError(
            f"{where}: these bytes were not verified and run on TFLM in {arena} bytes of arena "
            "first; refusing to hand them to TFLM. Check them with probe_tflm (or "
            f"probe_tflm_file) first. Received: sha256 {digest[:16]}..., arena {arena}."
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
        _check_tensor(_detail(self.interpreter.get_input_details(0)), seg["input"], f"{where} input")
        self.probabilities = seg["probabilities"]["output_index"]
        _check_tensor(_detail(self.interpreter.get_output_details(self.probabilities)),
                      seg["probabilities"], f"{where} probabilities")
        self.features = None
        if seg["features"] is not None:
            self.features = seg["features"]["output_index"]
            _check_tensor(_detail(self.interpreter.get_output_details(self.features)),
                          seg["features"], f"{where} features")

    def __call__(self, q):
        self.interpreter.set_input(q, 0)
        self.interpreter.invoke()
        probabilities = np.array(self.interpreter.get_output(self.probabilities))[0]
        if self.features is None:
            return probabilities, None
        return probabilities, np.array(self.interpreter.get_output(self.features))

