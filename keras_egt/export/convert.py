"""Full-int8 conversion of one segment with the TFLite converter, and its checks.

TensorFlow-only; imported lazily by `keras_egt.export`.
"""

import functools
import logging
import tempfile
import warnings

import numpy as np

from keras_egt.export import _deps

# Tensor types an integer-only kernel may see: int8 activations and weights, int32
# biases and shape/axis constants.
_ACTIVATION_TYPES = ("INT8",)
_CONSTANT_TYPES = ("INT8", "INT32")


def convert_segment(segment, calibration, name="segment", int8=True):
    """Converts a Keras segment to a full-int8 TFLite flatbuffer.

    Uses the real converter (Keras export archive, then
    `tf.lite.TFLiteConverter.from_saved_model`) with `Optimize.DEFAULT`,
    `TFLITE_BUILTINS_INT8` only and int8 inputs and outputs, calibrated on
    `calibration`, one sample at a time (batch 1, as deployed).

    Args:
        segment: a built Keras model taking one float32 input (TensorFlow backend).
        calibration: float32 array `(n, ...)` of real inputs of this segment.
        name: for error messages.
        int8: False converts to a float TFLite model instead (a baseline: no
            quantization, `calibration` only gives the input shape).

    Returns:
        The `.tflite` file as bytes.
    """
    tf = _deps.tensorflow()
    import keras

    calibration = np.asarray(calibration, np.float32)
    spec = keras.InputSpec(shape=(1,) + calibration.shape[1:], dtype="float32")

    def representative_dataset():
        for row in calibration:
            yield [row[None]]

    native = []
    with tempfile.TemporaryDirectory(prefix="keras_egt_export_") as saved_model:
        archive = keras.export.ExportArchive()
        archive.track(segment)
        archive.add_endpoint("serve", functools.partial(segment.__call__), input_signature=[spec])
        archive.write_out(saved_model, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
        if int8:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
            converter.representative_dataset = representative_dataset
        absl_logger = logging.getLogger("absl")
        level = absl_logger.level
        absl_logger.setLevel(logging.ERROR)
        try:
            with warnings.catch_warnings(), _deps.captured_native_output(native):
                warnings.simplefilter("ignore")
                return bytes(converter.convert())
        except Exception as error:
            log = "".join(native).strip().splitlines()[-15:]
            raise RuntimeError(
                f"{name}: the TFLite converter failed to produce a full-int8 model: {error}"
                + ("\nConverter output:\n  " + "\n  ".join(log) if log else "")
            ) from error
        finally:
            absl_logger.setLevel(level)


def strip_strings(model_bytes):
    """Drops a `.tflite` file's tensor names, description and signature table.

    Fused operators carry every folded op's name (a conv-BN-ReLU output is named
    four times over), which came to 20-40% of a small segment's flash. Both runtimes
    and the firmware address tensors by index, so nothing reads the names.

    Args:
        model_bytes: a `.tflite` flatbuffer.

    Returns:
        The flatbuffer without those strings, as bytes.
    """
    _deps.tensorflow("stripping a .tflite file")
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(model_bytes))
    flatbuffer_utils.strip_strings(model)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _enum_names(enum_class):
    return {v: k for k, v in vars(enum_class).items() if not k.startswith("_")}


def inspect_tflite(model_bytes):
    """Reads the ops and tensors of a `.tflite` flatbuffer (TFLite schema).

    Args:
        model_bytes: the flatbuffer.

    Returns:
        A dict: `ops` (builtin names in execution order, custom ops as
        `"CUSTOM:<code>"`), `operators` (per op: name, input and output tensor
        indices), `tensors` (per tensor: index, name, shape, dtype, scale and
        zero_point lists, constant), `inputs` and `outputs` (tensor dicts of the
        subgraph's inputs/outputs, in order), `num_subgraphs`.
    """
    _deps.tensorflow("reading a .tflite file")
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(bytearray(model_bytes), 0)
    op_names = _enum_names(schema.BuiltinOperator)
    type_names = _enum_names(schema.TensorType)
    codes = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        name = op_names.get(builtin, f"BUILTIN_{builtin}")
        if name == "CUSTOM":
            custom = code.CustomCode()
            name = "CUSTOM:" + (custom.decode() if custom else "?")
        codes.append(name)
    subgraph = model.Subgraphs(0)
    tensors = []
    for i in range(subgraph.TensorsLength()):
        t = subgraph.Tensors(i)
        q = t.Quantization()
        scale = q.ScaleAsNumpy() if q is not None and q.ScaleLength() else np.zeros(0)
        zero_point = q.ZeroPointAsNumpy() if q is not None and q.ZeroPointLength() else np.zeros(0)
        buffer = model.Buffers(t.Buffer()) if t.Buffer() < model.BuffersLength() else None
        constant = buffer is not None and (buffer.DataLength() > 0 or buffer.Offset() > 1)
        tensors.append({
            "index": i,
            "name": (t.Name() or b"").decode("utf-8", "replace"),
            "shape": [int(d) for d in t.ShapeAsNumpy()] if t.ShapeLength() else [],
            "dtype": type_names.get(t.Type(), f"TYPE_{t.Type()}"),
            "scale": [float(s) for s in np.atleast_1d(scale)],
            "zero_point": [int(z) for z in np.atleast_1d(zero_point)],
            "constant": bool(constant),
        })
    operators = []
    for i in range(subgraph.OperatorsLength()):
        op = subgraph.Operators(i)
        operators.append({
            "name": codes[op.OpcodeIndex()],
            "inputs": [int(j) for j in op.InputsAsNumpy()] if op.InputsLength() else [],
            "outputs": [int(j) for j in op.OutputsAsNumpy()] if op.OutputsLength() else [],
        })
    return {
        "ops": [op["name"] for op in operators],
        "operators": operators,
        "tensors": tensors,
        "inputs": [tensors[subgraph.Inputs(i)] for i in range(subgraph.InputsLength())],
        "outputs": [tensors[subgraph.Outputs(i)] for i in range(subgraph.OutputsLength())],
        "num_subgraphs": model.SubgraphsLength(),
    }


def check_full_int8(info, name="segment"):
    """Raises a ValueError unless every op of the model computes in int8.

    Every tensor going in or out of every op must be int8, except constant int32
    tensors (biases, axes, shapes); no custom or Flex op, no DEQUANTIZE, and no
    QUANTIZE from or to float. One subgraph, one int8 input, int8 outputs.

    Args:
        info: `inspect_tflite(...)` of the model.
        name: for the message.
    """
    problems = []
    if info["num_subgraphs"] != 1:
        problems.append(f"{info['num_subgraphs']} subgraphs (expected 1)")
    for i, op in enumerate(info["operators"]):
        if op["name"].startswith("CUSTOM") or op["name"].startswith("FLEX"):
            problems.append(f"op {i} is {op['name']} (custom/Flex ops do not run on TFLM)")
        if op["name"] == "DEQUANTIZE":
            problems.append(f"op {i} is DEQUANTIZE (a float island)")
        for j in op["inputs"] + op["outputs"]:
            if j < 0:  # optional input left out
                continue
            t = info["tensors"][j]
            allowed = _CONSTANT_TYPES if t["constant"] else _ACTIVATION_TYPES
            if t["dtype"] not in allowed:
                kind = "constant" if t["constant"] else "activation"
                problems.append(f"op {i} ({op['name']}) uses {t['dtype']} {kind} {t['name']!r}")
    for where in ("inputs", "outputs"):
        for t in info[where]:
            if t["dtype"] != "INT8" or len(t["scale"]) != 1:
                problems.append(f"model {where[:-1]} {t['name']!r} is {t['dtype']}, not per-tensor int8")
    if problems:
        raise ValueError(
            f"{name} is not a full-int8 model, so it would not run integer-only on a "
            f"microcontroller: " + "; ".join(problems[:8])
            + (f" (and {len(problems) - 8} more)" if len(problems) > 8 else "")
            + ". Every layer of the segment must have an int8 TFLite kernel."
        )


def _emulated_quantization(rmin, rmax):
    """(scale, zero_point) the converter derives from a calibrated [rmin, rmax].

    The TFLite quantizer widens the range to hold 0, takes
    `scale = (rmax - rmin) / 255` in double precision (stored as float32) and
    nudges the zero point to the nearest integer (MLIR `getNudgedScaleAndZeroPoint`).
    """
    rmin, rmax = min(float(rmin), 0.0), max(float(rmax), 0.0)
    scale = (rmax - rmin) / 255.0
    if scale <= 0:
        return None
    from_min = -128.0 - rmin / scale
    from_max = 127.0 - rmax / scale
    use_min = (128.0 + abs(rmin / scale)) < (127.0 + abs(rmax / scale))
    zero_point = from_min if use_min else from_max
    zero_point = np.sign(zero_point) * np.floor(abs(zero_point) + 0.5)  # std::round
    zero_point = int(min(max(zero_point, -128), 127))
    return float(np.float32(scale)), zero_point


def calibration_ranges(scale, zero_point, spread=4):
    """Float32 ranges `[rmin, rmax]` that calibrate to exactly `(scale, zero_point)`.

    Segment k+1's input must carry the scale and zero point of segment k's int8
    features. Those are what segment k can represent: `[(-128 - z) s, (127 - z) s]`.
    Calibrating segment k+1's input on data clipped to that range, with both ends
    present, makes the converter derive the same parameters; the candidates are
    float32 neighbours of the ends whose emulated quantization matches exactly,
    closest first (the export still verifies the converted model).

    Args:
        scale: segment k's features scale.
        zero_point: segment k's features zero point.
        spread: float32 steps tried on either side of each end.

    Returns:
        A list of `(rmin, rmax)` float32 pairs (possibly empty).
    """
    rmin0 = np.float32((-128 - zero_point) * np.float64(scale))
    rmax0 = np.float32((127 - zero_point) * np.float64(scale))

    def around(value):
        out = [value]
        up = down = value
        for _ in range(spread):
            up, down = np.nextafter(up, np.float32(np.inf)), np.nextafter(down, np.float32(-np.inf))
            out += [up, down]
        return out

    rmins = [np.float32(0.0)] if rmin0 == 0 else around(rmin0)
    target = (float(np.float32(scale)), int(zero_point))
    return [
        (float(lo), float(hi)) for hi in around(rmax0) for lo in rmins
        if _emulated_quantization(lo, hi) == target
    ]


def pin_range(data, rmin, rmax):
    """`data` clipped to `[rmin, rmax]`, with one value set to each end.

    Clipping changes nothing that int8 could represent: segment k saturates its
    features to that range anyway. Setting the current extremes to the ends (a
    change of a few float32 steps when the data already reach them) fixes the
    calibrated range exactly.
    """
    data = np.clip(np.asarray(data, np.float32), np.float32(rmin), np.float32(rmax))
    flat = data.reshape(-1)
    flat[int(np.argmax(flat))] = np.float32(rmax)
    if rmin < 0:
        flat[int(np.argmin(flat))] = np.float32(rmin)
    return flat.reshape(data.shape)
