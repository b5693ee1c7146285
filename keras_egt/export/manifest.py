"""The deploy folder's `manifest.json`: its one validator, its digest, its segment files.

Every reader of a deploy folder (the LiteRT and TFLM runtimes, the C-source writer,
`keras-egt run-tflite`) goes through `load_manifest` / `validate_manifest`, so a
manifest is checked the same way wherever it is read:

* every field has its type and range (`threshold_int8: "high"` is refused at load,
  naming the field, not a TypeError at predict time);
* the cross-checks hold: `thresholds[k]` gives `segments[k].threshold_int8` under the
  int8 rule of `keras_egt.exit_rule.int8_threshold` and segment k's
  probability quantization; segment k's features have the shape and quantization of
  segment k+1's input; `arena_bytes` is at least what TFLM's recording allocator
  recorded (`arena_recorded_bytes`); the number of segments matches `thresholds` and
  the `segment_*.tflite` files in the folder; the criterion is supported;
* `manifest_sha256`, the SHA-256 of the manifest's canonical content (sorted keys,
  no whitespace, `manifest_sha256` itself left out), matches. The exporter writes it;
  `egt_manifest.h` records it as `EGT_MANIFEST_SHA256` and `load_manifest` checks
  that a folder's `egt_manifest.h` carries the same digest; `model_data.c` must list
  exactly the manifest's segments (file, sha256, length) and `model_data.h` their
  count and files, so stale C sources are refused too. Segment files are covered by
  their own `sha256` in the manifest.

Threat model. The digests protect against accidental or silent edits (a threshold
tuned by hand, an entry deleted, a file copied in from another export, C sources
generated from another manifest): any such change is refused at load with an error
naming the field or the digest. They do not stop a deliberate attacker with write
access to the folder: such a person can edit the manifest and recompute every
digest (the algorithm is public and there is no key). Against that you need a
signature checked with a key the attacker does not hold (e.g. sign `manifest.json`
with your release key and verify it before flashing). What the runtimes do
guarantee even then is that no manifest can crash the Python process: values are
type- and range-checked, and TFLM allocation in an arena taken from a manifest is
tried first in a child process (see `keras_egt.export.runtime.arena`).

Pure Python: no TensorFlow needed.
"""

import hashlib
import json
import math
import os
import re

from keras_egt.exit_rule import INT8_CRITERION, int8_threshold

MANIFEST = "manifest.json"
FORMAT_VERSION = 2
CRITERION = INT8_CRITERION
DIGEST_KEY = "manifest_sha256"
MANIFEST_HEADER = "egt_manifest.h"

_HEX64 = re.compile(r"[0-9a-f]{64}")
_SEGMENT_FILE = re.compile(r"segment_(\d+)\.tflite")
_HEADER_DIGEST = re.compile(r'#define EGT_MANIFEST_SHA256 "([0-9a-f]{64})"')
MODEL_DATA_C = "model_data.c"
MODEL_DATA_H = "model_data.h"
_C_SEGMENT = re.compile(r"/\* (segment_\d+\.tflite), sha256 ([0-9a-f]{64}) \*/")
_C_LENS = re.compile(r"g_egt_segment_lens\[EGT_MODEL_DATA_NUM_SEGMENTS\] = \{([0-9, ]*)\}")
_H_COUNT = re.compile(r"#define EGT_MODEL_DATA_NUM_SEGMENTS (\d+)")
_H_SEGMENT = re.compile(r"extern const unsigned char g_egt_segment_\d+\[\];  /\* (\S+) \*/")

__all__ = [
    "MANIFEST",
    "FORMAT_VERSION",
    "check_c_sources",
    "load_manifest",
    "manifest_digest",
    "read_manifest",
    "read_segment",
    "seal_manifest",
    "sha256",
    "validate_manifest",
]


def sha256(data):
    """The SHA-256 of `data` (bytes) in hex, as the manifest records a segment file's."""
    return hashlib.sha256(data).hexdigest()


def manifest_digest(manifest):
    """The SHA-256 of a manifest's canonical content (`manifest_sha256` left out).

    Canonical: JSON with sorted keys, `(",", ":")` separators, ASCII only, no NaN.
    A manifest read back from `manifest.json` gives the digest of the dict written.

    Args:
        manifest: the manifest dict.

    Returns:
        64 lowercase hex digits.

    Example:
    >>> manifest_digest({"a": 1}) == manifest_digest({"a": 1, "manifest_sha256": "x"})
    True
    """
    content = {k: v for k, v in manifest.items() if k != DIGEST_KEY}
    try:
        text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                          allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"manifest: not JSON-serialisable ({error}).") from None
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def seal_manifest(manifest):
    """Sets `manifest["manifest_sha256"]` to `manifest_digest(manifest)`; returns it.

    The exporter seals the manifest it writes. Seal a hand-made manifest (tests, your
    own tools) the same way; editing `manifest.json` by hand without resealing is
    refused at load, which is the point.
    """
    manifest[DIGEST_KEY] = manifest_digest(manifest)
    return manifest


def _error(where, message):
    return ValueError(f"{where}: {message}")


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _require(mapping, key, where, source):
    if not isinstance(mapping, dict):
        raise _error(source, f"{where} must be an object, got {type(mapping).__name__}.")
    if key not in mapping:
        raise _error(source, f"{where} has no {key!r}; re-export the model with "
                     "keras_egt.export.export_cascade.")
    return mapping[key]


def _check_tensor(spec, where, source, rank=None, output=False):
    if not isinstance(spec, dict):
        raise _error(source, f"{where} must be an object, got {spec!r:.80}.")
    shape = _require(spec, "shape", where, source)
    if (not isinstance(shape, list) or not shape or len(shape) > 8
            or not all(_is_int(d) and 1 <= d <= 1 << 24 for d in shape)):
        raise _error(source, f"{where} shape must be 1 to 8 positive integers, got {shape!r:.80}.")
    if rank is not None and len(shape) != rank:
        raise _error(source, f"{where} must have rank {rank}, got shape {shape}.")
    if shape[0] != 1:
        raise _error(source, f"{where} shape must have batch 1, got {shape}.")
    if _require(spec, "dtype", where, source) != "int8":
        raise _error(source, f"{where} dtype is {spec['dtype']!r:.40}; a deploy folder holds "
                     "full-int8 segments only.")
    scale = _require(spec, "scale", where, source)
    zero_point = _require(spec, "zero_point", where, source)
    if not (_is_number(scale) and scale > 0):
        raise _error(source, f"{where} scale must be a positive number, got {scale!r:.40}.")
    if not (_is_int(zero_point) and -128 <= zero_point <= 127):
        raise _error(source, f"{where} zero_point must be an int in [-128, 127], got "
                     f"{zero_point!r:.40}.")
    if output:
        index = _require(spec, "output_index", where, source)
        if not (_is_int(index) and index in (0, 1)):
            raise _error(source, f"{where} output_index must be 0 or 1, got {index!r:.40}.")


def validate_manifest(manifest, source="manifest"):
    """Checks a manifest dict completely; returns it, or raises a ValueError naming the field.

    The checks (types, ranges, cross-checks, digest) are listed in this module's
    docstring. K, the number of segments, is read from the manifest.

    Args:
        manifest: the parsed `manifest.json`.
        source: what to call it in messages (e.g. its path).

    Returns:
        `manifest`, unchanged.

    Example:
    >>> validate_manifest(json.load(open("deploy/manifest.json")))  # doctest: +SKIP
    """
    if not isinstance(manifest, dict):
        raise _error(source, f"must hold a JSON object, got {type(manifest).__name__}.")
    num_classes, input_shape = _check_model(manifest, source)
    segments, thresholds = _check_counts(manifest, source)
    for k, seg in enumerate(segments, start=1):
        where = f"segments[{k - 1}] (segment {k})"
        _check_segment_file(seg, k, where, source)
        _check_segment_outputs(seg, k, thresholds, num_classes, where, source)
    _check_handoffs(segments, input_shape, source)
    recorded = _require(manifest, DIGEST_KEY, "the manifest", source)
    actual = manifest_digest(manifest)
    if recorded != actual:
        raise _error(source, f"its content digest is {actual[:16]}... but {DIGEST_KEY} says "
                     f"{str(recorded)[:16]:.16}...: the manifest was edited after export (or "
                     "belongs to another export). Refusing it; re-export the model.")
    return manifest


def _check_model(manifest, source):
    """The format, criterion, classes and input shape; returns `(num_classes, input_shape)`."""
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise _error(source, f"format_version is {version!r:.40}; this keras_egt reads version "
                     f"{FORMAT_VERSION}. Re-export the model.")
    criterion = manifest.get("criterion")
    if criterion != CRITERION:
        raise _error(source, f"criterion {criterion!r:.40} is not supported; the runtimes and "
                     f"firmware implement {CRITERION!r}.")
    num_classes = _require(manifest, "num_classes", "the manifest", source)
    if not (_is_int(num_classes) and 2 <= num_classes <= 1 << 16):
        raise _error(source, f"num_classes must be an int >= 2, got {num_classes!r:.40}.")
    class_names = manifest.get("class_names")
    if class_names is not None and (
        not isinstance(class_names, list) or len(class_names) != num_classes
        or not all(isinstance(n, str) for n in class_names)
    ):
        raise _error(source, f"class_names must be null or {num_classes} strings, got "
                     f"{class_names!r:.80}.")
    input_shape = _require(manifest, "input_shape", "the manifest", source)
    if not (isinstance(input_shape, list) and len(input_shape) == 3
            and all(_is_int(d) and d >= 1 for d in input_shape)):
        raise _error(source, f"input_shape must be 3 positive ints (H, W, C), got "
                     f"{input_shape!r:.80}.")
    return num_classes, input_shape


def _check_counts(manifest, source):
    """`segments` and `thresholds`, one threshold per segment; returns both."""
    segments = _require(manifest, "segments", "the manifest", source)
    if not isinstance(segments, list) or not segments:
        raise _error(source, "'segments' must be a non-empty list; re-export the model.")
    count = len(segments)
    thresholds = _require(manifest, "thresholds", "the manifest", source)
    if not (isinstance(thresholds, list) and all(_is_number(t) for t in thresholds)):
        raise _error(source, f"thresholds must be a list of finite numbers, got "
                     f"{thresholds!r:.80}.")
    if len(thresholds) != count:
        raise _error(source, f"thresholds has {len(thresholds)} entries but segments has "
                     f"{count}: a segment entry was added or removed. Re-export the model.")
    return segments, thresholds


def _check_segment_file(seg, k, where, source):
    """Segment k's index, file name, digest, sizes and ops."""
    if _require(seg, "index", where, source) != k:
        raise _error(source, f"{where} has index {seg['index']!r:.40}; expected {k}.")
    name = _require(seg, "file", where, source)
    if not isinstance(name, str) or os.path.basename(name) != name or name in ("", ".", ".."):
        raise _error(source, f"{where} file must be a plain file name, got {name!r:.80}.")
    digest = _require(seg, "sha256", where, source)
    if not (isinstance(digest, str) and _HEX64.fullmatch(digest)):
        raise _error(source, f"{where} sha256 must be 64 hex digits, got {digest!r:.80}.")
    for key in ("flash_bytes", "arena_bytes", "arena_recorded_bytes"):
        value = _require(seg, key, where, source)
        # 1 GiB: far above any microcontroller's, and below what a host can't allocate.
        if not (_is_int(value) and 1 <= value <= 1 << 30):
            raise _error(source, f"{where} {key} must be an int in [1, 2**30], got "
                         f"{value!r:.40}.")
    if seg["arena_bytes"] < seg["arena_recorded_bytes"]:
        raise _error(source, f"{where} arena_bytes {seg['arena_bytes']} is below the "
                     f"{seg['arena_recorded_bytes']} bytes TFLM's recording allocator "
                     "recorded for it (arena_recorded_bytes); TFLM cannot run it there.")
    if "macs" in seg and not (_is_int(seg["macs"]) and seg["macs"] >= 0):
        raise _error(source, f"{where} macs must be an int >= 0, got {seg['macs']!r:.40}.")
    ops = _require(seg, "ops", where, source)
    if not (isinstance(ops, list) and ops and all(
            isinstance(op, str) and op and op.replace("_", "").isalnum() and op.isascii()
            for op in ops)):
        raise _error(source, f"{where} ops must be a non-empty list of TFLite operator "
                     f"names, got {ops!r:.80}.")


def _check_segment_outputs(seg, k, thresholds, num_classes, where, source):
    """Segment k's tensors and exit threshold: the last has no features and always exits."""
    _check_tensor(_require(seg, "input", where, source), f"{where} input", source)
    probabilities = _require(seg, "probabilities", where, source)
    _check_tensor(probabilities, f"{where} probabilities", source, output=True)
    if probabilities["shape"] != [1, num_classes]:
        raise _error(source, f"{where} probabilities shape is {probabilities['shape']}; "
                     f"expected [1, {num_classes}] (num_classes).")
    features = _require(seg, "features", where, source)
    threshold = _require(seg, "threshold_int8", where, source)
    if k == len(thresholds):  # one threshold per segment, checked before
        if features is not None:
            raise _error(source, f"{where} is the last segment and must not output "
                         "features (features must be null).")
        if threshold is not None:
            raise _error(source, f"{where} is the last segment, which always exits: its "
                         f"threshold_int8 must be null, got {threshold!r:.40}.")
        return
    if features is None:
        raise _error(source, f"{where} has no features; only the last segment may "
                     "lack them.")
    _check_tensor(features, f"{where} features", source, rank=4, output=True)
    if features["output_index"] == probabilities["output_index"]:
        raise _error(source, f"{where} features and probabilities share output_index "
                     f"{features['output_index']}.")
    _check_threshold_int8(threshold, k, thresholds, probabilities, where, source)


def _check_threshold_int8(threshold, k, thresholds, probabilities, where, source):
    """Early exit k's `threshold_int8` is `thresholds[k - 1]` under the int8 rule."""
    if not (_is_int(threshold) and -128 <= threshold <= 128):
        raise _error(source, f"{where} threshold_int8 must be an int in [-128, 128], "
                     f"got {threshold!r:.40}.")
    expected = int8_threshold(thresholds[k - 1], probabilities["scale"],
                              probabilities["zero_point"])
    if threshold != expected:
        raise _error(source, f"{where} threshold_int8 is {threshold} but thresholds"
                     f"[{k - 1}] = {thresholds[k - 1]!r} with its probabilities' "
                     f"quantization (scale {probabilities['scale']!r}, zero point "
                     f"{probabilities['zero_point']}) gives {expected}; one of the two "
                     "was edited. Re-export with the threshold you want.")


def _check_handoffs(segments, input_shape, source):
    """Segment 1 takes the model input; each segment's features are the next one's input."""
    if segments[0]["input"]["shape"] != [1] + input_shape:
        raise _error(source, f"segments[0] input shape {segments[0]['input']['shape']} is not "
                     f"[1] + input_shape {input_shape}.")
    for k in range(1, len(segments)):
        out, nxt = segments[k - 1]["features"], segments[k]["input"]
        for key in ("shape", "scale", "zero_point"):
            if out[key] != nxt[key]:
                raise _error(source, f"segment {k} features {key} {out[key]!r} differ from "
                             f"segment {k + 1} input {key} {nxt[key]!r}; the int8 buffer is "
                             "handed over as is, so they must be equal. Re-export the model.")


def load_manifest(deploy_dir):
    """Reads and validates a deploy folder's `manifest.json` (see `validate_manifest`).

    Also refuses a folder whose `segment_<k>.tflite` files are not exactly the
    manifest's segments, and one whose C sources were generated from another
    manifest (see `check_c_sources`).

    Args:
        deploy_dir: a folder written by `keras_egt.export.export_cascade`.

    Returns:
        The manifest dict.

    Example:
    >>> manifest = load_manifest("deploy/")  # doctest: +SKIP
    """
    deploy_dir = os.fspath(deploy_dir)
    if not os.path.isdir(deploy_dir):
        raise FileNotFoundError(f"deploy folder not found: {deploy_dir!r}.")
    path = os.path.join(deploy_dir, MANIFEST)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path!r} not found: not a deploy folder written by keras_egt.export.export_cascade."
        )
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f, parse_constant=_no_constants)
    except (ValueError, RecursionError) as error:  # JSONDecodeError, bad UTF-8, NaN, nesting
        raise ValueError(f"{path!r} is not valid JSON ({str(error)[:200]}); re-export the "
                         "model.") from None
    validate_manifest(manifest, source=repr(path))
    listed = {seg["file"] for seg in manifest["segments"]}
    extra = sorted(f for f in os.listdir(deploy_dir) if _SEGMENT_FILE.fullmatch(f)
                   and f not in listed)
    if extra:
        raise ValueError(f"{path!r} lists {len(listed)} segments but the folder also holds "
                         f"{extra[:5]}; a segment entry was removed or a file added. "
                         "Re-export the model.")
    check_c_sources(deploy_dir, manifest)
    return manifest


# The name `keras_egt.export` exports (next to `load_cascade`).
read_manifest = load_manifest


def _read_text(path):
    with open(path, encoding="ascii", errors="replace") as f:
        return f.read()


def _stale(path, what, found, expected):
    return ValueError(
        f"{path!r} was not generated from this manifest ({what}: {found}; the manifest's: "
        f"{expected}); regenerate it with keras_egt.export.c_sources.write_c_sources or "
        "re-export."
    )


def check_c_sources(deploy_dir, manifest):
    """Refuses C sources in a deploy folder that were generated from another manifest.

    `egt_manifest.h` must carry the manifest's `EGT_MANIFEST_SHA256`; `model_data.c`
    must list exactly the manifest's segments in order, each with its file name and
    sha256 (the comment above its array) and its length (`g_egt_segment_lens`);
    `model_data.h` must declare as many segments, with the same files. A file that
    is absent is not checked (the C sources are optional in a deploy folder).

    Args:
        deploy_dir: the deploy folder.
        manifest: its validated manifest dict.

    Raises:
        ValueError: naming the stale file and what differs.

    Example:
    >>> check_c_sources("deploy/", load_manifest("deploy/"))  # doctest: +SKIP
    """
    segments = manifest["segments"]
    header = os.path.join(deploy_dir, MANIFEST_HEADER)
    if os.path.isfile(header):
        match = _HEADER_DIGEST.search(_read_text(header)[: 1 << 20])
        if match is None or match.group(1) != manifest[DIGEST_KEY]:
            raise _stale(header, "its EGT_MANIFEST_SHA256",
                         match.group(1)[:16] + "..." if match else "missing",
                         manifest[DIGEST_KEY][:16] + "...")
    source = os.path.join(deploy_dir, MODEL_DATA_C)
    if os.path.isfile(source):
        text = _read_text(source)
        listed = _C_SEGMENT.findall(text)
        expected = [(seg["file"], seg["sha256"]) for seg in segments]
        if listed != expected:
            diff = next((k for k, pair in enumerate(zip(listed, expected), 1)
                         if pair[0] != pair[1]), min(len(listed), len(expected)) + 1)
            raise _stale(source, f"segment {diff} of {len(listed)}",
                         _short(listed, diff), _short(expected, diff))
        lens = _C_LENS.search(text)
        found = [int(n) for n in lens.group(1).split(",") if n.strip()] if lens else None
        if found != [seg["flash_bytes"] for seg in segments]:
            raise _stale(source, "g_egt_segment_lens", found,
                         [seg["flash_bytes"] for seg in segments])
    declared = os.path.join(deploy_dir, MODEL_DATA_H)
    if os.path.isfile(declared):
        text = _read_text(declared)
        count = _H_COUNT.search(text)
        files = _H_SEGMENT.findall(text)
        expected = [seg["file"] for seg in segments]
        if count is None or int(count.group(1)) != len(segments) or files != expected:
            raise _stale(declared, "its segments",
                         f"{count.group(1) if count else 'no'} count, files {files[:8]}",
                         f"{len(segments)}, files {expected[:8]}")


def _short(pairs, k):
    if k > len(pairs):
        return "none"
    name, digest = pairs[k - 1]
    return f"{name} sha256 {digest[:16]}..."


def _no_constants(name):
    raise ValueError(f"{name} is not allowed in a manifest")


def read_segment(deploy_dir, seg):
    """The bytes of one segment file, after checking its size and sha256 against the manifest."""
    path = os.path.join(os.fspath(deploy_dir), seg["file"])
    if not os.path.isfile(path):
        raise FileNotFoundError(f"segment {seg['index']}: {path!r} not found.")
    size = os.path.getsize(path)
    if size != seg["flash_bytes"]:
        raise ValueError(
            f"segment {seg['index']}: {path!r} has {size} bytes, the manifest says "
            f"{seg['flash_bytes']} (sha256 {seg['sha256'][:16]}...). The file was modified or "
            "comes from another export; refusing to run it. Re-export the model."
        )
    with open(path, "rb") as f:
        data = f.read()
    digest = sha256(data)
    if digest != seg["sha256"] or len(data) != seg["flash_bytes"]:
        raise ValueError(
            f"segment {seg['index']}: {path!r} does not match the manifest (sha256 "
            f"{digest[:16]}..., {len(data)} bytes; manifest: {seg['sha256'][:16]}..., "
            f"{seg['flash_bytes']} bytes). The file was modified or comes from another "
            "export; refusing to run it. Re-export the model."
        )
    return data
