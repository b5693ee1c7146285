"""The int8 math of a deployed cascade: quantize, dequantize, and its decisions.

The exit rule itself, and the int8 test of a threshold, live in `keras_egt.exit_rule`;
this module applies them to int8 arrays as the runtimes and the firmware see them.
"""

import numpy as np

from keras_egt.exit_rule import first_exit


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

    Example:
    >>> labels, exits = decide_int8(runner.run_segments(x), runner.thresholds_int8)
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
    """Int8 to float as TFLite's DEQUANTIZE does: `(q - zero_point) * scale`."""
    return (np.asarray(q, np.float32) - int(zero_point)) * np.float32(scale)
