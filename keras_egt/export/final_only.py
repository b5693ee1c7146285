"""The int8 model without early exit, and batch-1 TFLM time with vs without early exit.

The reference of every int8 speedup is the same trained model, exported through the
same converter path as the cascade's segments (`convert.convert_segment`: full int8,
calibrated on the same data) but unsplit: every stage and the final head only, one
flatbuffer, one TFLM interpreter.
"""

import os
import time

import numpy as np

__all__ = ["FinalOnly", "export_final_only", "tflm_time_per_sample"]

FINAL_ONLY_FILE = "final_only.tflite"


def _final_only_class():
    import keras
    from keras import ops

    class FinalOnly(keras.Model):
        """Every stage, then the final head's softmax: the model without early exit."""

        def __init__(self, source, **kwargs):
            super().__init__(**kwargs)
            self.source_stages = list(source.stages)
            self.head = source.heads[-1]

        def call(self, x):
            for stage in self.source_stages:
                x = stage(x, training=False)
            return ops.softmax(ops.cast(self.head(x), "float32"), axis=-1)

    return FinalOnly


def FinalOnly(model):
    """A built Keras model of `model`'s stages and final head (shared weights).

    Example:
    >>> probabilities = FinalOnly(model)(x[:1])
    """
    import keras

    final = _final_only_class()(model, name="final_only")
    final(keras.ops.zeros((1,) + tuple(model.image_shape)))
    return final


def export_final_only(model, representative_data, path):
    """Writes the int8 model without early exit to `path` (`.tflite`).

    Args:
        model: a trained `EarlyExitModel` (any backend: on another one this runs in a
            TensorFlow-backend subprocess, as `export_cascade`).
        representative_data: float inputs `(n, H, W, C)` for the int8 calibration (use
            the cascade's, so both are quantized alike).
        path: the file to write (written to a temporary name, then renamed).

    Returns:
        A dict: `path`, `flash_bytes`, `arena_bytes` (measured TFLM arena) and the
        int8 input's `scale` and `zero_point`.

    Example:
    >>> info = export_final_only(model, x_train[:256], "deploy/final_only.tflite")
    """
    import keras

    path = os.path.abspath(os.fspath(path))
    if keras.backend.backend() != "tensorflow":
        from keras_egt.export.exporter import run_in_tensorflow

        return run_in_tensorflow("export_final_only", model,
                                 {"representative_data": representative_data}, {"path": path})
    from keras_egt.atomic import atomic_output
    from keras_egt.export import convert
    from keras_egt.export import runtime as rt

    data = convert.convert_segment(FinalOnly(model), np.asarray(representative_data, np.float32),
                                   name="final-only model")
    info = convert.inspect_tflite(data)
    convert.check_full_int8(info, "final-only model")
    data = convert.strip_strings(data)  # as the segments are
    spec = info["inputs"][0]
    arena = rt.tflm_arena_bytes(data, spec["shape"], spec["zero_point"][0])
    with atomic_output(path, ".tflite") as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return {"path": path, "flash_bytes": len(data), "arena_bytes": int(arena),
            "scale": float(spec["scale"][0]), "zero_point": int(spec["zero_point"][0])}


def tflm_time_per_sample(deploy_dir, final_only, x, samples=200, warmup=2, threshold=None,
                         verbose=0):
    """Batch-1 ms per sample on the TFLM interpreter: the int8 cascade vs without early exit.

    The cascade (`CascadeRunner.predict`, stopping at the first confident exit) and
    the unsplit final-only model (`export_final_only`) run on the same samples,
    interleaved sample by sample, each timed from float input to label in this
    thread's CPU time.

    Args:
        deploy_dir: a folder written by `export_cascade`.
        final_only: the dict `export_final_only` returned.
        x: float inputs; the first `samples` are timed.
        samples: samples timed at most.
        warmup: untimed samples first.
        threshold: None for the exported thresholds, else probability threshold(s)
            (as `load_cascade` takes them).
        verbose: 1 shows a progress bar over the timed samples (updated outside the
            clocked spans).

    Returns:
        A dict: `samples`, `ms_with_early_exit`, `ms_without_early_exit`, `speedup`,
        their medians, `exit_shares`, and the labels of both paths
        (`labels_with_early_exit`, `labels_without_early_exit`, lists).

    Example:
    >>> tflm_time_per_sample("deploy/", info, x_test, samples=100)["speedup"]
    """
    from keras_egt import timing
    from keras_egt.exit_rule import exit_shares
    from keras_egt.export import runtime as rt

    runner = rt.load_cascade(deploy_dir, runtime="tflm", threshold=threshold)
    # The one door to TFLM: the verifier and the probe child see these bytes first.
    data = rt.probe_tflm_file(final_only["path"], final_only["arena_bytes"],
                              (1,) + tuple(runner.input_shape), final_only["zero_point"],
                              where="the final-only model")
    interpreter = rt.tflm_interpreter(data, final_only["arena_bytes"], "the final-only model")
    scale, zero_point = final_only["scale"], final_only["zero_point"]
    x = np.asarray(x)
    count = timing.sample_count(samples, x)

    def with_early_exit(sample):
        labels, exits = runner.predict(sample)
        return labels[0], exits[0]

    def without_early_exit(sample):
        interpreter.set_input(rt.quantize(sample, scale, zero_point), 0)
        interpreter.invoke()
        return int(np.argmax(interpreter.get_output(0)[0]))

    for i in range(min(int(warmup), len(x))):
        with_early_exit(x[i : i + 1])
        without_early_exit(x[i : i + 1])
    # TFLM runs in this thread: its CPU time is what each path costs, and unlike wall
    # clock it does not count the time other processes hold the core.
    result = timing.interleaved(with_early_exit, without_early_exit, x, count,
                                time.thread_time, _progress(count, verbose))
    return {
        **{key: result[key] for key in timing.SUMMARY_FIELDS},
        "exit_shares": exit_shares(result["exits"], runner.num_segments),
        "labels_with_early_exit": result["labels_with_early_exit"],
        "labels_without_early_exit": result["labels_without_early_exit"],
    }


def _progress(count, verbose):
    if not verbose:
        return None
    import keras

    return keras.utils.Progbar(count, unit_name="sample")
