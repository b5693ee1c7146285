"""The exit rule of the confident-exit cascade, written once, in numpy alone.

A sample leaves at early exit k as soon as that exit is confident enough:
`confidence(p_k) >= threshold_k`, where

* `"max_probability"` (the paper's): `confidence = max_c p_c`;
* `"entropy"`: `confidence = 1 - H(p) / log(C)`, with `H(p) = -sum_c p_c log p_c`.

Both confidences lie in [0, 1] and a higher threshold is stricter: 0 sends every
sample out at exit 1, a threshold above 1 (`NEVER_EXIT`, `inf`) never exits, and the
final exit takes whatever reaches it. The float cascade (`keras_egt.cascade`), its
compiled batch-1 path, the timing paths, calibration and the int8 runtimes
(`keras_egt.export.runtime`, on int8 probabilities against int8 thresholds) all
decide through `should_exit` / `first_exit`, float thresholds are resolved by
`resolve_thresholds` and int8 ones by `int8_thresholds` alone, and the cost and
exit-share figures of every report come from `exit_summary`.
`keras_egt/export/kit/egt_cascade.c` is the device's copy, tested equal. This module
imports neither Keras nor a backend, so a deploy folder runs without them.
"""

import math

import numpy as np

__all__ = ["CRITERIA", "INT8_CRITERION", "NEVER_EXIT", "average_cost", "check_int8_criterion",
           "check_threshold", "confidence", "decide",
           "exit_shares", "exit_summary", "first_exit", "int8_threshold", "int8_thresholds",
           "oracle_exits", "resolve_criterion", "resolve_thresholds", "should_exit"]

CRITERIA = ("max_probability", "entropy")
# The int8 runtimes and the C driver compare the largest int8 probability.
INT8_CRITERION = "max_probability"
# Any threshold above 1 never fires (confidences lie in [0, 1]); 2.0 stays a plain
# JSON number, unlike inf.
NEVER_EXIT = 2.0


def _check_criterion(criterion):
    if criterion not in CRITERIA:
        raise ValueError(f"Unknown exit criterion {criterion!r}; use one of {CRITERIA}.")
    return criterion


def check_threshold(value, where="threshold"):
    """`value` as a float, or a one-line ValueError: a NaN threshold decides nothing.

    The one check of a single threshold (the float cascade, calibration and the
    int8 export resolve theirs through `resolve_thresholds`, which calls it). A NaN
    would make every `confidence >= threshold` comparison False, so the cascade
    would silently never exit early; strings and bools are refused too rather than
    read as numbers.

    Args:
        value: a number (numpy scalars and 0-d arrays included); above 1 never exits.
        where: the argument's name, for the message.

    Returns:
        The threshold as a float.

    Example:
    >>> check_threshold(np.float32(0.5))
    0.5
    """
    number = None
    if not isinstance(value, (str, bytes, bool, np.bool_)):
        try:
            number = float(value)
        except (TypeError, ValueError):
            pass
    if number is None or math.isnan(number):
        why = "NaN compares false to every confidence" if number is not None else "not a number"
        raise ValueError(
            f"{where} must be a number (0 exits every sample at exit 1, above 1 never "
            f"exits early, the paper uses 0.9), {why}: pass e.g. {where}=0.9 or the "
            f"thresholds of calibrate_thresholds. Received: {where}={value!r:.60}."
        )
    return number


def confidence(probabilities, criterion="max_probability"):
    """The confidence of each prediction, in [0, 1] (see the module docstring).

    Args:
        probabilities: array `(..., num_classes)` of softmax outputs.
        criterion: `"max_probability"` or `"entropy"`.

    Returns:
        A float64 array `probabilities.shape[:-1]`.

    Example:
    >>> confidence(np.array([[0.5, 0.5], [1.0, 0.0]]), "entropy")   # [0., 1.]
    """
    _check_criterion(criterion)
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim < 1 or p.shape[-1] < 2:
        raise ValueError(
            f"probabilities must have a class axis of at least 2 classes last, got shape {p.shape}."
        )
    if criterion == "max_probability":
        return p.max(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    entropy = -plogp.sum(axis=-1)
    return np.clip(1.0 - entropy / math.log(p.shape[-1]), 0.0, 1.0)


def should_exit(probabilities, threshold, criterion="max_probability"):
    """The exit rule: whether each sample is confident enough to leave at this exit.

    `confidence(probabilities, criterion) >= threshold`. Threshold 0 exits every
    sample; any threshold above 1 exits none.

    Args:
        probabilities: numpy array `(num_classes,)` or `(n, num_classes)` of softmax
            outputs of one exit.
        threshold: a number; higher is stricter for both criteria.
        criterion: `"max_probability"` (the paper's) or `"entropy"` (exit when
            `1 - H(p)/log(C) >= threshold`).

    Returns:
        A numpy bool array `probabilities.shape[:-1]` (a 0-d array for one sample).

    Example:
    >>> should_exit(np.array([[0.95, 0.05], [0.6, 0.4]]), 0.9)
    array([ True, False])
    """
    threshold = check_threshold(threshold)
    return np.asarray(confidence(probabilities, criterion) >= threshold)


def resolve_criterion(threshold, criterion=None):
    """The exit criterion to use with `threshold`.

    Thresholds from `calibrate_thresholds` remember their criterion: it is used when
    `criterion` is None, and a different explicit one is an error (the thresholds of
    one criterion mean nothing for the other). Otherwise None means
    `"max_probability"`.
    """
    calibrated = getattr(threshold, "criterion", None)
    if criterion is None:
        return calibrated or "max_probability"
    _check_criterion(criterion)
    if calibrated is not None and calibrated != criterion:
        raise ValueError(
            f"These thresholds were calibrated for criterion {calibrated!r}, not "
            f"{criterion!r}; calibrate again with criterion={criterion!r}."
        )
    return criterion


def resolve_thresholds(threshold, num_exits):
    """One threshold per exit, from one number or one per early exit.

    The one place thresholds are resolved: the float cascade, the timing paths,
    calibration and the int8 export all call it.

    Args:
        threshold: one number for every early exit; or K - 1 numbers (one per
            early exit); or K numbers, the last ignored (the final exit takes every
            sample that reaches it). A value above 1, `inf` included, never exits.
        num_exits: the model's number of exits K (>= 2).

    Returns:
        A tuple of K floats, the last `NEVER_EXIT`; values above 1 are stored as
        `NEVER_EXIT` (a plain JSON number).

    Example:
    >>> resolve_thresholds(0.9, 3)
    (0.9, 0.9, 2.0)
    >>> resolve_thresholds([0.8, float("inf")], 3)
    (0.8, 2.0, 2.0)
    """
    num_exits = int(num_exits)
    if np.ndim(threshold) == 0:
        values = [check_threshold(threshold)] * (num_exits - 1)
    else:
        values = list(threshold)
        if len(values) not in (num_exits - 1, num_exits):
            raise ValueError(
                f"threshold must be one number or one per exit ({num_exits}; the last is "
                f"ignored, exit {num_exits} takes every sample that reaches it, or "
                f"{num_exits - 1}), got {len(values)}."
            )
        values = [check_threshold(v, f"threshold[{k}]") for k, v in enumerate(values)]
        values = values[: num_exits - 1]
    return tuple(min(v, NEVER_EXIT) for v in values) + (NEVER_EXIT,)


def first_exit(fires):
    """The exit decision: index of the first early exit that fires, else the final one.

    Args:
        fires: bool array `(K - 1, ...)`: whether early exit k is confident enough
            for each sample (`should_exit`, or the int8 test of the runtimes).

    Returns:
        An int64 array `fires.shape[1:]` of 0-based exits in 0..K-1.

    Example:
    >>> first_exit(np.array([[False, True], [True, False]]))   # K = 3
    array([1, 0])
    """
    fires = np.asarray(fires, bool)
    fires = np.concatenate([fires, np.ones((1,) + fires.shape[1:], bool)], axis=0)
    return np.argmax(fires, axis=0).astype(np.int64)


def decide(probabilities, thresholds, criterion="max_probability"):
    """The cascade's decisions from every exit's probabilities, without running it.

    Sample i leaves at the first early exit k whose probabilities pass
    `should_exit(p_k, thresholds[k], criterion)`, else at the final exit. Identical
    to `Cascade.predict` on the same probabilities (the cascade just does not
    compute the exits it never reaches).

    Args:
        probabilities: array `(K, n, num_classes)` (`metrics.exit_probabilities`).
        thresholds: as `resolve_thresholds`.
        criterion: `"max_probability"` or `"entropy"`.

    Returns:
        `(labels, exits)`: int arrays `(n,)`, exits 0-based.

    Example:
    >>> labels, exits = decide(metrics.exit_probabilities(model, x), 0.9)
    """
    probabilities = np.asarray(probabilities)
    thresholds = resolve_thresholds(thresholds, len(probabilities))
    conf = confidence(probabilities[:-1], criterion)
    exits = first_exit(conf >= np.asarray(thresholds[:-1])[:, None])
    labels = np.argmax(probabilities, axis=-1)[exits, np.arange(probabilities.shape[1])]
    return labels.astype(np.int64), exits


def oracle_exits(correct):
    """The oracle's exit of every sample: its earliest correct exit, else the last.

    Args:
        correct: bool array `(K, n)`, whether exit k classifies sample i correctly.

    Returns:
        An int array `(n,)` of 0-based exits.

    Example:
    >>> oracle_exits(np.array([[0, 1], [1, 1], [0, 0], [0, 0], [1, 0]], bool))
    array([1, 0])
    """
    return first_exit(np.asarray(correct, bool)[:-1])


def exit_shares(exits, num_exits):
    """Fraction of samples leaving at each of the `num_exits` exits (0-based `exits`)."""
    exits = np.asarray(exits, np.int64)
    return [float(v) for v in np.bincount(exits, minlength=num_exits) / max(1, len(exits))]


def average_cost(exits, exit_costs):
    """Mean cost per sample of samples leaving at `exits` (0-based); 0 for no sample.

    Args:
        exits: int array `(n,)` of 0-based exits.
        exit_costs: the K costs of leaving at each exit (`costs.exit_macs`, or
            instructions, or seconds).

    Returns:
        A float.

    Example:
    >>> average_cost(np.array([0, 2]), [10, 20, 40])
    25.0
    """
    exits = np.asarray(exits, np.int64)
    return float(np.mean(np.asarray(exit_costs, np.float64)[exits])) if len(exits) else 0.0


def exit_summary(exits, num_exits, correct=None, exit_costs=None, final_cost=None):
    """The figures every report gives of a set of exit decisions.

    Args:
        exits: int array `(n,)` of 0-based exits (a cascade's, or `oracle_exits`).
        num_exits: K.
        correct: optional bool array `(n,)`, whether each sample's label is right.
        exit_costs: optional K costs of leaving at each exit.
        final_cost: the cost without early exit (needed with `exit_costs`).

    Returns:
        A dict: `accuracy` (None without `correct`), `average_macs` and `speedup`
        (`final_cost / average_macs`; None without `exit_costs`), `exit_shares`.

    Example:
    >>> exit_summary(np.array([0, 2]), 3, np.array([True, False]), [10, 20, 40], 40)
    {'accuracy': 0.5, 'average_macs': 25.0, 'speedup': 1.6, 'exit_shares': [0.5, 0.0, 0.5]}
    """
    out = {"accuracy": None if correct is None else float(np.mean(correct)),
           "average_macs": None, "speedup": None,
           "exit_shares": exit_shares(exits, num_exits)}
    if exit_costs is not None:
        average = average_cost(exits, exit_costs)
        out["average_macs"] = average
        out["speedup"] = float(final_cost) / average if average else float("nan")
    return out


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
    threshold, scale = check_threshold(threshold), float(scale)
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive number, got {scale}.")
    if math.isinf(threshold):
        return 128 if threshold > 0 else -128
    return int(min(max(math.ceil(threshold / scale + int(zero_point)), -128), 128))


def check_int8_criterion(threshold):
    """A one-line ValueError if `threshold` was calibrated for a criterion int8 cannot run.

    Args:
        threshold: a number, a sequence, or `calibrate_thresholds`' result.

    Example:
    >>> check_int8_criterion(0.9)
    """
    criterion = resolve_criterion(threshold)
    if criterion != INT8_CRITERION:
        raise ValueError(
            f"These thresholds were calibrated for criterion {criterion!r}; the int8 "
            f"cascade (LiteRT, TFLM and the C driver) exits on the max probability only. "
            f"Calibrate with criterion={INT8_CRITERION!r} for export."
        )


def int8_thresholds(threshold, quantization):
    """Every segment's int8 exit test: `resolve_thresholds`, then `int8_threshold`.

    The one place int8 thresholds are resolved: the export writes them into the
    manifest, the manifest check recomputes them, and the runners use them for a
    threshold other than the exported one.

    Args:
        threshold: as `resolve_thresholds` (one number, or one per early exit).
        quantization: K pairs `(scale, zero_point)` of each segment's int8
            probabilities (the last is not used: the final segment always exits).

    Returns:
        A list of K values: K - 1 ints, then None.

    Example:
    >>> int8_thresholds(0.9, [(1 / 256, -128)] * 3)
    [103, 103, None]
    """
    check_int8_criterion(threshold)
    values = resolve_thresholds(threshold, len(quantization))
    return [int8_threshold(t, scale, zero_point)
            for t, (scale, zero_point) in zip(values[:-1], quantization[:-1])] + [None]
