"""C sources of an exported cascade, for microcontroller firmware.

`write_c_sources(out_dir, manifest)` turns a deploy folder written by
`keras_egt.export.export_cascade` into three files next to the `.tflite` segments:

* `model_data.h` / `model_data.c`: one 16-byte aligned `const unsigned char
  g_egt_segment_<k>[]` per segment, byte-identical to `segment_<k>.tflite`, with its
  length `g_egt_segment_<k>_len`, and the tables `g_egt_segments[]` /
  `g_egt_segment_lens[]`.
* `egt_manifest.h`: the manifest as C constants: segment count, classes, input shape and
  quantization, per-segment int8 exit thresholds, feature shapes and quantization,
  output indices, TFLM arena bytes (and their maximum, the size of one shared arena),
  and the TFLM ops as an X-macro (`EGT_FOR_EACH_TFLM_OP(X)`) for a
  `tflite::MicroMutableOpResolver`.

The portable C99 cascade driver that consumes them is `egt_cascade.{h,c}`, shipped in the
package (`keras_egt/export/kit/`); `tflite/README.md` in the repository shows how to wire it into a TFLM firmware.
Pure Python: no TensorFlow needed.
"""

import json
import math
import os
import struct

from keras_egt import atomic
from keras_egt.export.manifest import DIGEST_KEY, read_segment, validate_manifest

__all__ = [
    "format_c_array",
    "format_c_float",
    "tflm_op_method",
    "write_c_sources",
]

_HEX = tuple(f"0x{b:02x}" for b in range(256))

# TFLite builtin names whose MicroMutableOpResolver method is not the plain CamelCase.
_TFLM_METHOD_EXCEPTIONS = {
    "BATCH_MATMUL": "BatchMatMul",
    "CUMSUM": "CumSum",
    "PADV2": "PadV2",
    "UNIDIRECTIONAL_SEQUENCE_LSTM": "UnidirectionalSequenceLSTM",
}

_ALIGN_MACRO = """\
/* 16-byte alignment of the model arrays (TFLM reads the flatbuffer in place).
 * Define EGT_MODEL_ALIGN yourself for a compiler not listed here. */
#ifndef EGT_MODEL_ALIGN
#if defined(__GNUC__) || defined(__clang__) || defined(__ARMCC_VERSION)
#define EGT_MODEL_ALIGN __attribute__((aligned(16)))
#elif defined(__cplusplus) && __cplusplus >= 201103L
#define EGT_MODEL_ALIGN alignas(16)
#elif defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
#define EGT_MODEL_ALIGN _Alignas(16)
#elif defined(_MSC_VER)
#define EGT_MODEL_ALIGN __declspec(align(16))
#elif defined(__ICCARM__)
#define EGT_MODEL_ALIGN _Pragma("data_alignment=16")
#else
#error "egt: define EGT_MODEL_ALIGN as this compiler's 16-byte alignment specifier"
#endif
#endif
"""


def format_c_array(name, data, align_macro="EGT_MODEL_ALIGN", per_line=12):
    """C definition of a `const unsigned char` array holding `data`, and its length.

    Args:
        name: the C identifier of the array; the length is `<name>_len`.
        data: the bytes (bytes-like, non-empty: C has no empty arrays).
        align_macro: a macro placed before the definition (e.g. an alignment
            specifier), or None for none.
        per_line: bytes per line.

    Returns:
        The C source text (ends with a newline).

    Example:
    >>> print(format_c_array("g_x", b"\\x01\\xff", align_macro=None), end="")
    const unsigned char g_x[2] = {
      0x01, 0xff
    };
    const unsigned int g_x_len = 2;
    """
    data = bytes(data)
    _check_identifier(name)
    if not data:
        raise ValueError(f"{name}: cannot write an empty C array; the data has 0 bytes.")
    if per_line < 1:
        raise ValueError(f"per_line must be >= 1, got {per_line}.")
    lines = [
        "  " + ", ".join(map(_HEX.__getitem__, data[i : i + per_line]))
        for i in range(0, len(data), per_line)
    ]
    prefix = f"{align_macro} " if align_macro else ""
    return (
        f"{prefix}const unsigned char {name}[{len(data)}] = {{\n"
        + ",\n".join(lines)
        + f"\n}};\nconst unsigned int {name}_len = {len(data)};\n"
    )


def format_c_float(value):
    """A C `float` literal that reads back as float32(value) exactly.

    Example:
    >>> format_c_float(0.00390625), format_c_float(1.0), format_c_float(2e-05)
    ('0.00390625f', '1.0f', '1.99999995e-05f')
    """
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"cannot write a non-finite float ({value}) as a C constant.")
    # Round to float32 first (the TFLite scale is a float32); 9 digits read back exactly.
    text = f'{struct.unpack("f", struct.pack("f", value))[0]:.9g}'
    if not any(c in text for c in ".e"):
        text += ".0"
    return text + "f"


def tflm_op_method(op):
    """The `tflite::MicroMutableOpResolver` method name (without `Add`) of a builtin op.

    Args:
        op: a TFLite builtin operator name as in the manifest, e.g. `"MAX_POOL_2D"`.

    Returns:
        e.g. `"MaxPool2D"`, for `resolver.AddMaxPool2D()`.

    Example:
    >>> tflm_op_method("CONV_2D"), tflm_op_method("FULLY_CONNECTED")
    ('Conv2D', 'FullyConnected')
    """
    if not isinstance(op, str) or not op or not op.replace("_", "").isalnum():
        raise ValueError(f"not a TFLite builtin operator name: {op!r}.")
    op = op.upper()
    if op in _TFLM_METHOD_EXCEPTIONS:
        return _TFLM_METHOD_EXCEPTIONS[op]
    # "2D" stays "2D" (Conv2D), other words are capitalised (SpaceToBatchNd, L2Pool2D).
    return "".join(
        part if part[0].isdigit() else part[0] + part[1:].lower()
        for part in op.split("_") if part
    )


def write_c_sources(out_dir, manifest):
    """Writes `model_data.c`, `model_data.h` and `egt_manifest.h` into a deploy folder.

    Each file is written atomically (temporary file, then rename). The manifest is
    validated first by `keras_egt.export.manifest.validate_manifest` (every field, the
    handoff between segments, which the C driver relies on, the int8 thresholds and
    the manifest's digest), and the segment files against it (sha256 and size).

    Args:
        out_dir: the folder holding the manifest's `.tflite` files; the C files go there.
        manifest: the manifest as a dict (see `keras_egt.export`), or the path of a
            `manifest.json`.

    Returns:
        The paths written, in the order model_data.h, model_data.c, egt_manifest.h.

    Example:
    >>> write_c_sources("deploy/", "deploy/manifest.json")  # doctest: +SKIP
    """
    out_dir = os.fspath(out_dir)
    if not os.path.isdir(out_dir):
        raise FileNotFoundError(f"deploy folder not found: {out_dir!r}.")
    if isinstance(manifest, dict):
        validate_manifest(manifest)
    else:
        with open(manifest, encoding="utf-8") as f:
            manifest = validate_manifest(json.load(f), source=repr(os.fspath(manifest)))
    segments = manifest["segments"]
    for seg in segments:
        for op in seg["ops"]:
            tflm_op_method(op)
    blobs = [read_segment(out_dir, seg) for seg in segments]
    files = {
        "model_data.h": _model_data_h(segments),
        "model_data.c": _model_data_c(segments, blobs),
        "egt_manifest.h": _manifest_h(manifest, segments),
    }
    paths = []
    for name, text in files.items():
        path = os.path.join(out_dir, name)
        atomic.write_text(path, text, encoding="ascii")
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------
# Checks


def _check_identifier(name):
    if not (isinstance(name, str) and name and name.replace("_", "a").isalnum()
            and name.isascii() and not name[0].isdigit()):
        raise ValueError(f"not a C identifier: {name!r}.")


# ---------------------------------------------------------------------------------
# Writers

_GENERATED = "Generated by keras_egt.export.c_sources.write_c_sources from manifest.json; do not edit."


def _model_data_h(segments):
    n = len(segments)
    externs = "\n".join(
        f"extern const unsigned char g_egt_segment_{k}[];  /* {seg['file']} */\n"
        f"extern const unsigned int g_egt_segment_{k}_len;"
        for k, seg in enumerate(segments, start=1)
    )
    return f"""/* model_data.h: the int8 TFLite segments of an EGT cascade as C arrays.
 * {_GENERATED} */
#ifndef EGT_MODEL_DATA_H_
#define EGT_MODEL_DATA_H_

#ifdef __cplusplus
extern "C" {{
#endif

#define EGT_MODEL_DATA_NUM_SEGMENTS {n}

{_ALIGN_MACRO}
{externs}

/* g_egt_segments[k - 1] is segment k's flatbuffer (for tflite::GetModel). */
extern const unsigned char *const g_egt_segments[EGT_MODEL_DATA_NUM_SEGMENTS];
extern const unsigned int g_egt_segment_lens[EGT_MODEL_DATA_NUM_SEGMENTS];

#ifdef __cplusplus
}}
#endif

#endif /* EGT_MODEL_DATA_H_ */
"""


def _model_data_c(segments, blobs):
    parts = [
        f"/* model_data.c: the int8 TFLite segments of an EGT cascade.\n * {_GENERATED} */\n"
        '#include "model_data.h"\n'
    ]
    for k, (seg, data) in enumerate(zip(segments, blobs), start=1):
        parts.append(f"\n/* {seg['file']}, sha256 {seg['sha256']} */\n")
        parts.append(format_c_array(f"g_egt_segment_{k}", data))
    n = len(segments)
    parts.append(
        "\nconst unsigned char *const g_egt_segments[EGT_MODEL_DATA_NUM_SEGMENTS] = {"
        + ", ".join(f"g_egt_segment_{k}" for k in range(1, n + 1))
        + "};\nconst unsigned int g_egt_segment_lens[EGT_MODEL_DATA_NUM_SEGMENTS] = {"
        + ", ".join(str(len(b)) for b in blobs)
        + "};\n"
    )
    return "".join(parts)


def _int(value):
    # Parenthesised negatives, so that `-EGT_X` or `a-EGT_X` stay correct.
    return f"({value})" if value < 0 else str(value)


def _ulong(value):
    return f"{value}UL" if value <= 0xFFFFFFFF else f"{value}ULL"


def _init(values):
    return "{" + ", ".join(values) + "}"


def _c_string(text):
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif " " <= ch <= "~" and ch != "?":  # '?' would allow trigraphs
            out.append(ch)
        else:
            out.extend(f"\\{b:03o}" for b in ch.encode("utf-8"))
    return '"' + "".join(out) + '"'


def _comment(text):
    return str(text).replace("*/", "* /")


def _nbytes(shape):
    return math.prod(shape)


def _tensor_macros(prefix, spec):
    shape = spec["shape"]
    lines = [
        f"#define {prefix}_SHAPE {_init(str(d) for d in shape)}",
        f"#define {prefix}_BYTES {_nbytes(shape)}",
    ]
    if len(shape) == 4:
        lines += [
            f"#define {prefix}_HEIGHT {shape[1]}",
            f"#define {prefix}_WIDTH {shape[2]}",
            f"#define {prefix}_CHANNELS {shape[3]}",
        ]
    lines += [
        f"#define {prefix}_SCALE {format_c_float(spec['scale'])}",
        f"#define {prefix}_ZERO_POINT {_int(spec['zero_point'])}",
    ]
    if "output_index" in spec:
        lines.append(f"#define {prefix}_OUTPUT_INDEX {int(spec['output_index'])}")
    return lines


def _manifest_h(manifest, segments):
    n = len(segments)
    num_classes = manifest["num_classes"]
    first_input = segments[0]["input"]
    thresholds = manifest.get("thresholds")
    thr_int8 = [
        seg["threshold_int8"] if k < n and seg["threshold_int8"] is not None else -128
        for k, seg in enumerate(segments, start=1)
    ]
    feature_bytes = [_nbytes(s["features"]["shape"]) if s["features"] else 0 for s in segments]
    arenas = [s["arena_bytes"] for s in segments]
    ops = sorted({op.upper() for s in segments for op in s["ops"]})

    out = [
        f"/* egt_manifest.h: constants of an exported EGT cascade, for the firmware.\n"
        f" * {_GENERATED}\n"
        f" * keras_egt {_comment(manifest.get('keras_egt_version', '?'))}, "
        f"criterion {_comment(manifest.get('criterion', 'max_probability'))}. */",
        "#ifndef EGT_MANIFEST_H_",
        "#define EGT_MANIFEST_H_",
        "",
        f"#define EGT_MANIFEST_FORMAT_VERSION {int(manifest['format_version'])}",
        "/* SHA-256 of manifest.json's canonical content (keras_egt.export.manifest); a",
        " * build can compare it with the deploy folder it was made from. */",
        f'#define EGT_MANIFEST_SHA256 "{manifest[DIGEST_KEY]}"',
        f"#define EGT_NUM_SEGMENTS {n}",
        f"#define EGT_NUM_CLASSES {num_classes}",
    ]
    if manifest.get("class_names"):
        out.append(
            "#define EGT_CLASS_NAMES "
            + _init(_c_string(name) for name in manifest["class_names"])
        )
    out += [
        "",
        "/* Model input (segment 1), int8: q = clamp(round(x / EGT_INPUT_SCALE) +",
        " * EGT_INPUT_ZERO_POINT, -128, 127), x preprocessed exactly as in training. */",
    ]
    out += _tensor_macros("EGT_INPUT", first_input)
    out += [
        "",
        "/* Memory. TFLM arena bytes were measured on the host with TFLM's recording",
        " * allocator; add a margin on the target (see tflite/README.md). */",
        f"#define EGT_ARENA_BYTES {max(arenas)}  /* one arena shared by all segments */",
        f"#define EGT_ARENA_BYTES_SUM {sum(arenas)}  /* separate arenas, one per segment */",
        f"#define EGT_MAX_FEATURE_BYTES {max(feature_bytes + [1])}  /* each ping-pong buffer */",
        f"#define EGT_FLASH_BYTES {sum(s['flash_bytes'] for s in segments)}",
        "",
        "/* Per-segment tables, indexed by segment - 1. */",
        "/* Exit k fires iff max(int8 probabilities) >= threshold (-128 always, 128 never);",
        " * the last segment always exits. */",
        f"#define EGT_THRESHOLDS_INT8 {_init(_int(t) for t in thr_int8)}",
    ]
    if (isinstance(thresholds, list) and len(thresholds) == n
            and all(isinstance(t, (int, float)) and math.isfinite(t) for t in thresholds)):
        out.append(
            "#define EGT_THRESHOLDS "
            + _init(repr(float(t)) for t in thresholds)
            + "  /* float thresholds, for reference */"
        )
    out += [
        f"#define EGT_SEGMENT_ARENA_BYTES {_init(str(a) for a in arenas)}",
        f"#define EGT_FEATURE_BYTES {_init(str(b) for b in feature_bytes)}",
        "#define EGT_PROBS_OUTPUT_INDICES "
        + _init(str(int(s["probabilities"]["output_index"])) for s in segments),
        "#define EGT_FEATURES_OUTPUT_INDICES "
        + _init(_int(int(s["features"]["output_index"])) if s["features"] else "(-1)"
                for s in segments),
    ]
    for k, seg in enumerate(segments, start=1):
        p = f"EGT_SEGMENT_{k}"
        out += ["", f"/* Segment {k}: {_comment(seg['file'])}, ops: "
                f"{_comment(', '.join(seg['ops']))} */"]
        out += [
            f"#define {p}_FLASH_BYTES {int(seg['flash_bytes'])}",
            f"#define {p}_ARENA_BYTES {int(seg['arena_bytes'])}",
        ]
        if isinstance(seg.get("macs"), int):
            out.append(f"#define {p}_MACS {_ulong(seg['macs'])}")
        out.append(f"#define {p}_THRESHOLD_INT8 {_int(thr_int8[k - 1])}")
        out += _tensor_macros(f"{p}_INPUT", seg["input"])
        out += _tensor_macros(f"{p}_PROBS", seg["probabilities"])
        if seg["features"]:
            out += _tensor_macros(f"{p}_FEATURES", seg["features"])
    out += [
        "",
        f"/* TFLM ops used by the segments ({len(ops)}): {', '.join(ops)}.",
        " * tflite::MicroMutableOpResolver<EGT_NUM_TFLM_OPS> resolver;",
        " * #define EGT_ADD_OP(name) if (resolver.Add##name() != kTfLiteOk) return false;",
        " * EGT_FOR_EACH_TFLM_OP(EGT_ADD_OP) */",
        f"#define EGT_NUM_TFLM_OPS {len(ops)}",
        "#define EGT_FOR_EACH_TFLM_OP(X) " + " ".join(f"X({tflm_op_method(op)})" for op in ops),
        "",
        "#endif /* EGT_MANIFEST_H_ */",
        "",
    ]
    return "\n".join(out)
