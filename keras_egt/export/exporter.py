"""`export_cascade`: a trained early-exit model to K int8 TFLite segments and a manifest."""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import keras
import numpy as np

from keras_egt import atomic
from keras_egt.checks import NonFiniteError, check_finite_outputs, check_image_dtype
from keras_egt.exit_rule import check_int8_criterion, int8_threshold, resolve_thresholds
from keras_egt.export import _lifetime
from keras_egt.export import manifest as mf
from keras_egt.export import runtime as rt
from keras_egt.export.manifest import seal_manifest
from keras_egt.export.segments import build_segments, check_model, segment_inputs, segment_shapes

# Retries of a segment whose input quantization did not come out equal to the
# previous segment's features (each retry is one more conversion).
_HANDOFF_ATTEMPTS = 3


def check_representative_data(data, image_shape):
    """The representative data as float32 `(n, H, W, C)`, or a clear ValueError."""
    data = np.asarray(data)
    if data.ndim == 3 and tuple(data.shape) == tuple(image_shape):
        data = data[None]
    if data.ndim != 4 or tuple(data.shape[1:]) != tuple(image_shape):
        raise ValueError(
            f"representative_data must be real inputs of shape (n, "
            f"{', '.join(map(str, image_shape))}), preprocessed as in training; got shape "
            f"{data.shape}. Pass e.g. x_train[:256]."
        )
    if len(data) == 0:
        raise ValueError("representative_data is empty; pass a few hundred training inputs.")
    check_image_dtype(data.dtype, "representative_data")
    data = data.astype(np.float32)
    if not np.all(np.isfinite(data)):
        raise ValueError("representative_data holds NaN or Inf values; clean them first.")
    return data


# What to do about a model whose weights or outputs are NaN or Inf.
_NONFINITE_FIX = ("its training diverged; retrain it with a lower learning rate and export "
                  "the new model")


def check_finite_model(model, data):
    """Raises `NonFiniteError` unless `model`'s weights and exit probabilities on `data` are finite.

    The converter calibrates on NaN ranges without a word, so a diverged model would
    be exported as int8 segments that answer one class from exit 1 for every input.
    Checked before anything is converted (a forward pass costs far less).

    Args:
        model: the `EarlyExitModel` to export.
        data: its representative data, float32 `(n, H, W, C)`.

    Raises:
        NonFiniteError: a weight or an exit probability is NaN or Inf (one line
            naming them and the fix).

    Example:
    >>> check_finite_model(model, x_train[:256])
    """
    from keras_egt.metrics import exit_probabilities

    bad = [w.path for w in model.weights if not _all_finite(w)]
    if bad:
        raise NonFiniteError(
            f"the model's weights hold NaN or Inf in {len(bad)} of {len(model.weights)} "
            f"variables, so its export would be garbage: {_NONFINITE_FIX}. "
            f"Received: model with non-finite weights {bad[:3]}."
        )
    check_finite_outputs(exit_probabilities(model, data),
                         "the exits' probabilities on representative_data", fix=_NONFINITE_FIX)


def _all_finite(variable):
    values = keras.ops.convert_to_numpy(variable)
    return not np.issubdtype(values.dtype, np.inexact) or bool(np.all(np.isfinite(values)))


# Staging and replaced folders next to out_dir, tagged with the exporting pid, and the
# job folders of run_in_tensorflow: what a killed export leaves, removed by the next.
_STAGING = r"\.{name}\.(?:tmp|old)-(\d+)-.*"
_JOB_TMP_PATTERN = r"keras_egt_export_(\d+)_.*"


def _is_deploy_folder(folder):
    """Whether `folder` holds a manifest.json that `validate_manifest` accepts."""
    try:
        with open(os.path.join(folder, mf.MANIFEST), encoding="utf-8") as f:
            mf.validate_manifest(json.load(f))
    except (OSError, ValueError):
        return False
    return True


def _refuse_replacing(out_dir, inputs):
    """Raises a ValueError if replacing `out_dir` would delete what is not an old export."""
    real = os.path.realpath(out_dir)
    here = os.path.realpath(os.getcwd())
    if here == real or here.startswith(real.rstrip(os.sep) + os.sep):
        raise ValueError(
            f"out_dir {out_dir!r} is the current folder or holds it; it is never replaced. "
            "Choose a new folder for the deploy files, e.g. deploy/ (overwrite / --overwrite "
            "only replaces an earlier deploy folder)."
        )
    for path in inputs:
        path = os.path.realpath(os.fspath(path))
        if path == real or path.startswith(real.rstrip(os.sep) + os.sep):
            raise ValueError(
                f"out_dir {out_dir!r} holds the input {path!r}; it is never replaced. "
                "Choose a new folder for the deploy files (overwrite / --overwrite only "
                "replaces an earlier deploy folder)."
            )
    if not _is_deploy_folder(out_dir):
        raise ValueError(
            f"out_dir {out_dir!r} exists, is not empty and is not a deploy folder (no valid "
            f"{mf.MANIFEST}); overwrite / --overwrite only replaces an earlier deploy folder. "
            "Choose a new or empty folder."
        )


def _check_out_dir(out_dir, overwrite, inputs=()):
    """`out_dir` as an absolute path, or a clear error before any work.

    A non-empty `out_dir` is only replaced (with `overwrite`) when it is an earlier
    deploy folder; never the current folder, one holding it or one holding an input.

    Args:
        out_dir: the deploy folder to create.
        overwrite: whether an earlier deploy folder there may be replaced.
        inputs: paths the export reads (e.g. the model file), never deleted.

    Returns:
        The absolute `out_dir`.
    """
    out_dir = os.path.abspath(os.fspath(out_dir))
    ancestor = os.path.dirname(out_dir)
    while not os.path.exists(ancestor) and os.path.dirname(ancestor) != ancestor:
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor) or not os.access(ancestor, os.W_OK | os.X_OK):
        raise PermissionError(
            f"cannot create the deploy folder {out_dir!r}: {ancestor!r} is not a writable "
            "folder. Choose a folder you can write to."
        )
    if os.path.exists(out_dir):
        if not os.path.isdir(out_dir):
            raise ValueError(f"out_dir {out_dir!r} exists and is not a folder.")
        if os.listdir(out_dir):
            _refuse_replacing(out_dir, inputs)
            if not overwrite:
                raise ValueError(
                    f"out_dir {out_dir!r} holds an earlier export; pass overwrite=True "
                    "(--overwrite) to replace it, or choose another folder."
                )
    return out_dir


def _publish(tmp_dir, out_dir):
    """Moves the finished folder into place (see `atomic.publish_folder`)."""
    _lifetime.check_parent()
    atomic.publish_folder(tmp_dir, out_dir, last=mf.MANIFEST)


def _tensor_spec(t):
    return {"shape": list(t["shape"]), "dtype": t["dtype"].lower(),
            "scale": float(t["scale"][0]), "zero_point": int(t["zero_point"][0])}


def _same_quantization(a, b):
    return a["shape"] == b["shape"] and a["scale"] == b["scale"] and a["zero_point"] == b["zero_point"]


def _convert_checked(segment, calibration, k, num_classes, next_shape, previous):
    """Converts segment k (1-based) and returns (bytes, info, manifest entry parts)."""
    from keras_egt.export import convert

    name = f"segment {k}"
    if previous is None:
        attempts = [None]
    else:
        attempts = convert.calibration_ranges(previous["scale"], previous["zero_point"])
        attempts = attempts[:_HANDOFF_ATTEMPTS] or [
            ((-128 - previous["zero_point"]) * previous["scale"],
             (127 - previous["zero_point"]) * previous["scale"])
        ]
    for attempt in attempts:
        data = calibration if attempt is None else convert.pin_range(calibration, *attempt)
        model_bytes = convert.convert_segment(segment, data, name=name)
        info = convert.inspect_tflite(model_bytes)
        convert.check_full_int8(info, name)
        if len(info["inputs"]) != 1:
            raise ValueError(f"{name} has {len(info['inputs'])} inputs; expected 1.")
        spec_in = _tensor_spec(info["inputs"][0])
        if previous is None or _same_quantization(spec_in, previous):
            break
    else:
        raise ValueError(
            f"int8 handoff mismatch: segment {k - 1} outputs features with scale "
            f"{previous['scale']!r} and zero point {previous['zero_point']}, but the converter "
            f"gave segment {k}'s input scale {spec_in['scale']!r} and zero point "
            f"{spec_in['zero_point']} (after {len(attempts)} calibrations pinned to segment "
            f"{k - 1}'s range). Firmware passes the int8 buffer as is, so the export stops "
            "rather than ship a silent requantization. Please report this with your "
            "TensorFlow version."
        )
    outputs = info["outputs"]
    expected = 1 if next_shape is None else 2
    ranks = sorted(len(t["shape"]) for t in outputs)
    if len(outputs) != expected or ranks != ([2] if next_shape is None else [2, 4]):
        raise ValueError(
            f"{name}: expected {expected} outputs (probabilities (1, {num_classes})"
            f"{'' if next_shape is None else ' and features'}), got shapes "
            f"{[t['shape'] for t in outputs]}."
        )
    p_index = next(i for i, t in enumerate(outputs) if len(t["shape"]) == 2)
    probabilities = dict(_tensor_spec(outputs[p_index]), output_index=p_index)
    if probabilities["shape"] != [1, num_classes]:
        raise ValueError(f"{name}: probabilities have shape {probabilities['shape']}, "
                         f"expected [1, {num_classes}].")
    features = None
    if next_shape is not None:
        f_index = 1 - p_index
        features = dict(_tensor_spec(outputs[f_index]), output_index=f_index)
        if features["shape"] != [1] + list(next_shape):
            raise ValueError(f"{name}: features have shape {features['shape']}, expected "
                             f"{[1] + list(next_shape)}.")
    return convert.strip_strings(model_bytes), info, spec_in, probabilities, features


def _export_into(folder, model, data, thresholds, class_names, verbose, metadata=None):
    from keras_egt import __version__, costs

    num_exits = model.num_exits
    shapes = segment_shapes(model)
    calibration = segment_inputs(model, data)
    segments = build_segments(model)
    macs = costs.segment_macs(model)
    progress = keras.utils.Progbar(num_exits, unit_name="segment") if verbose else None
    if progress is not None:
        progress.update(0)  # shown at once: the first segment takes the longest
    entries, previous = [], None
    for k in range(1, num_exits + 1):
        next_shape = shapes[k] if k < num_exits else None
        model_bytes, info, spec_in, probabilities, features = _convert_checked(
            segments[k - 1], calibration[k - 1], k, model.num_classes, next_shape, previous
        )
        file_name = f"segment_{k}.tflite"
        with open(os.path.join(folder, file_name), "wb") as f:
            f.write(model_bytes)
        ops = list(dict.fromkeys(info["ops"]))
        threshold_int8 = None
        if k < num_exits:
            threshold_int8 = int8_threshold(
                thresholds[k - 1], probabilities["scale"], probabilities["zero_point"]
            )
        arena, recorded = rt.tflm_arena_bytes(
            model_bytes, spec_in["shape"], spec_in["zero_point"], return_recorded=True
        )
        entries.append({
            "index": k,
            "file": file_name,
            "sha256": mf.sha256(model_bytes),
            "flash_bytes": len(model_bytes),
            "arena_bytes": arena,
            "arena_recorded_bytes": recorded,
            "macs": int(macs[k - 1]),
            "input": spec_in,
            "probabilities": probabilities,
            "features": features,
            "threshold_int8": threshold_int8,
            "ops": ops,
        })
        previous = features
        if progress is not None:
            progress.update(k)
    manifest = {
        "format_version": mf.FORMAT_VERSION,
        "keras_egt_version": __version__,
        "num_classes": int(model.num_classes),
        "class_names": None if class_names is None else [str(c) for c in class_names],
        "input_shape": [int(d) for d in model.image_shape],
        "criterion": mf.CRITERION,
        "thresholds": thresholds,
        "num_calibration_samples": int(len(data)),
        "quantization": "ptq",
        "segments": entries,
    }
    for key, value in (metadata or {}).items():
        if key in manifest and key != "quantization":
            raise ValueError(f"metadata key {key!r} is a manifest field; rename it.")
        manifest[key] = value
    seal_manifest(manifest)
    path = os.path.join(folder, mf.MANIFEST)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    return manifest


def export_cascade(model, out_dir, representative_data, threshold=0.9, class_names=None,
                   overwrite=False, verbose=False, metadata=None):
    """Exports a trained early-exit model as K full-int8 TFLite segments for a microcontroller.

    Segment k runs stage k and exit head k of `model` and outputs exit k's softmax
    probabilities and (k < K) its int8 feature map, which segment k+1 takes as
    input. Each segment is converted with the TFLite converter to full int8
    (`TFLITE_BUILTINS_INT8` only, int8 inputs and outputs), calibrated on
    `representative_data` propagated through the float model (segment k on the
    float features leaving stage k-1). First the float model's weights and its exits'
    probabilities on `representative_data` are checked finite (`check_finite_model`):
    a diverged model is refused before anything is converted. Then:

    * every op is checked to compute in int8 (no float, Flex or custom op);
    * segment k+1's input quantization is made equal to segment k's features
      (calibration pinned to the range segment k's int8 output represents) and
      verified, so firmware hands the int8 buffer over as is;
    * each segment's TFLM arena is measured with TFLM's recording allocator.

    The folder gets `segment_1.tflite` ... `segment_K.tflite`, `manifest.json`
    (shapes, quantization, int8 exit thresholds, sha256, flash and arena bytes,
    MACs, ops) and the C sources `model_data.c/.h` and `egt_manifest.h` of
    `keras_egt.export.c_sources`. The manifest is sealed with its content digest
    (`manifest_sha256`, see `keras_egt.export.manifest`), which `egt_manifest.h`
    records too. The folder is staged in `.<name>.tmp-<pid>-*` next to `out_dir` and
    renamed at the end (it then has the user's umask, like any folder), so a failed
    export leaves nothing behind; SIGTERM is turned into an exception that removes
    the staging folder, the TensorFlow worker of another backend dies with its parent,
    and what a SIGKILL left (staging folders of dead processes here, their
    `keras_egt_export_*` / `keras_egt_arena_*` folders in the system temp folder) is
    removed by the next export.

    Needs TensorFlow (`pip install keras-egt[deploy]`). A model living on the JAX or
    PyTorch backend is saved to a temporary `.keras` file and exported by a
    `KERAS_BACKEND=tensorflow` subprocess; the result is the same.

    Args:
        model: a trained `EarlyExitModel` (e.g. an `EarlyExitCNN`).
        out_dir: the deploy folder to create.
        representative_data: real inputs `(n, H, W, C)` preprocessed as in training,
            e.g. `x_train[:256]`.
        threshold: the exit threshold on the max probability: one number (the
            paper: 0.9) or one per exit (K - 1, or K with the last unused), e.g.
            from `calibrate_thresholds` with the max-probability criterion. The int8
            runtimes and the C driver implement the max-probability rule only, so
            thresholds calibrated for `"entropy"` are refused.
        class_names: optional class names for the manifest.
        overwrite: replace an existing non-empty `out_dir`.
        verbose: show a progress bar.
        metadata: extra JSON-serialisable keys for the manifest (e.g. how the model
            was quantized: `quantization_aware_export` sets `"quantization": "qat"`).

    Returns:
        The manifest (a dict, also in `out_dir/manifest.json`).

    Example:
    >>> egt.export.export_cascade(model, "deploy/", x_train[:256], threshold=0.9)
    >>> runner = egt.export.load_cascade("deploy/", runtime="tflm")
    """
    check_model(model)
    data = check_representative_data(representative_data, model.image_shape)
    check_int8_criterion(threshold)
    thresholds = list(resolve_thresholds(threshold, model.num_exits))
    if class_names is not None and len(class_names) != model.num_classes:
        raise ValueError(f"class_names has {len(class_names)} names for "
                         f"{model.num_classes} classes.")
    out_dir = _check_out_dir(out_dir, overwrite)
    check_finite_model(model, data)
    if keras.backend.backend() != "tensorflow":
        return run_in_tensorflow(
            "export_cascade", model, {"representative_data": data},
            dict(out_dir=out_dir, threshold=thresholds, overwrite=overwrite,
                 class_names=None if class_names is None else [str(c) for c in class_names],
                 verbose=verbose, metadata=metadata),
        )
    from keras_egt.export import _deps, c_sources

    _deps.tensorflow()
    from keras_egt.locks import writer_lock

    # Only here, in the process that publishes: another backend's TensorFlow worker comes here.
    with _lifetime.terminate_raises(), writer_lock(out_dir, "deploy folder"):
        tmp_dir = _staging_folder(out_dir)
        try:
            manifest = _export_into(tmp_dir, model, data, thresholds, class_names, verbose,
                                    metadata)
            c_sources.write_c_sources(tmp_dir, manifest)
            _lifetime.user_mode(tmp_dir)
            _publish(tmp_dir, out_dir)
        except BaseException:
            shutil.rmtree(tmp_dir, ignore_errors=True)
            raise
    return manifest


def _staging_folder(out_dir):
    """A fresh `.<name>.tmp-<pid>-*` folder next to `out_dir`, after removing the ones that
    killed exports left there (and in the system temp folder)."""
    parent, name = os.path.split(out_dir)
    try:
        os.makedirs(parent, exist_ok=True)
        _lifetime.remove_stale(parent, _STAGING.format(name=re.escape(atomic.staging_tag(name))))
        _lifetime.remove_stale(tempfile.gettempdir(), _JOB_TMP_PATTERN)
        _lifetime.remove_stale(tempfile.gettempdir(), rt.ARENA_TMP_PATTERN)
        return tempfile.mkdtemp(prefix=f".{atomic.staging_tag(name)}.tmp-{os.getpid()}-", dir=parent)
    except OSError as error:
        raise PermissionError(
            f"cannot create the deploy folder {out_dir!r}: {error.strerror or error} "
            f"(in {parent!r}). Choose a folder you can write to."
        ) from None


# ---------------------------------------------------------------------------------
# Other backends: the export runs in a TensorFlow-backend subprocess.

_ERRORS = {"ValueError": ValueError, "TypeError": TypeError, "ImportError": ImportError,
           "FileNotFoundError": FileNotFoundError, "RuntimeError": RuntimeError,
           "PermissionError": PermissionError, "NonFiniteError": NonFiniteError}


def run_in_tensorflow(function, model, arrays, kwargs):
    """Runs `keras_egt.export.<function>(model, **arrays, **kwargs)` with KERAS_BACKEND=tensorflow.

    The model goes through a temporary `.keras` file, the arrays through `.npy`
    files. Errors of the subprocess are raised here with the same type
    (ValueError, TypeError, ImportError, FileNotFoundError) or as RuntimeError.

    Returns:
        The function's JSON-serialisable result.
    """
    _lifetime.remove_stale(tempfile.gettempdir(), _JOB_TMP_PATTERN)
    with _lifetime.terminate_raises(), \
            tempfile.TemporaryDirectory(prefix=f"keras_egt_export_{os.getpid()}_") as work:
        model_path = os.path.join(work, "model.keras")
        model.save(model_path)
        array_paths = {}
        for name, value in arrays.items():
            array_paths[name] = os.path.join(work, f"{name}.npy")
            np.save(array_paths[name], np.asarray(value))
        job = {"function": function, "model": model_path, "arrays": array_paths,
               "kwargs": kwargs, "result": os.path.join(work, "result.json")}
        job_path = os.path.join(work, "job.json")
        with open(job_path, "w", encoding="utf-8") as f:
            json.dump(job, f)
        env = dict(os.environ, KERAS_BACKEND="tensorflow")
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        # The worker dies with this process: SIGTERM from the kernel when we die (Linux)
        # and EOF on its stdin pipe (everywhere); it then removes its staging folder.
        process = _lifetime.run_child(
            [sys.executable, "-m", "keras_egt.export._worker", job_path], env=env,
            stdout=None if kwargs.get("verbose") else subprocess.PIPE,
        )
        result = None
        if os.path.exists(job["result"]):
            with open(job["result"], encoding="utf-8") as f:
                result = json.load(f)
        if result is None or "error" in result:
            if result is not None:
                error = _ERRORS.get(result["error_type"], RuntimeError)
                raise error(result["error"])
            tail = "\n".join((process.stderr or "").strip().splitlines()[-20:])
            raise RuntimeError(
                f"the TensorFlow-backend export subprocess failed (exit code "
                f"{process.returncode}):\n{tail}"
            )
        return result["value"]
