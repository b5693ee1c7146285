"""Risk-controlled calibration of the cascade's exit thresholds (Learn then Test).

`calibrate_thresholds` picks exit thresholds on calibration data so that a promise
made about *new* data holds with a stated probability:

    P(risk of the returned thresholds <= epsilon) >= confidence = 1 - delta,

the probability being over the draw of the calibration data. The risk is one of

* `max_accuracy_drop=epsilon` (labels needed): the mean over samples of the accuracy
  gap `clip(1[cascade wrong] - 1[last exit wrong], 0, 1)`, i.e. how often early exit
  turns a right answer of the last exit into a wrong one (an upper bound on the
  accuracy drop);
* `max_disagreement=epsilon` (no labels needed): the mean of `1[cascade label !=
  last exit label]`, so a device fleet can recalibrate on unlabelled field data. It
  bounds the accuracy gap from above, so it is the more conservative of the two;
* `mac_budget=B` (no labels needed): the mean MACs per sample, certified `<= B`.

**Procedure** (Angelopoulos, Bates, Candès, Jordan, Lei 2021, "Learn then Test"; the
route of CALM, Schuster et al. 2022, for early-exit language models):

1. A one-dimensional *path* of threshold settings, ordered from the most
   conservative to the most aggressive, is fixed before the calibration data is
   looked at: by default one threshold shared by every early exit, from
   `NEVER_EXIT` down to 0 on a fixed grid (finer near 1, where max-probability
   thresholds live); or a path of per-exit settings given by the caller.
2. For each setting, the null hypothesis "risk > epsilon" gets the Hoeffding-Bentkus
   p-value of the mean loss r of n independent losses in [0, 1] (Bates, Angelopoulos,
   Lei, Malik, Jordan 2021): `p = min(exp(-n h(min(r, eps), eps)),
   e * P(Binomial(n, eps) <= ceil(n r)))`, `h(a, b) = a log(a/b) + (1-a)
   log((1-a)/(1-b))` (`hoeffding_bentkus_pvalue`).
3. Fixed-sequence testing at level delta: walk the path from the conservative end,
   accept settings while their p-value is `<= delta`, stop at the first that is not.
   The last accepted setting is returned. No multiplicity correction is needed: a
   wrong acceptance needs the *first* setting with risk > epsilon along the path to
   pass its own level-delta test. For `mac_budget` the walk goes the other way,
   from the cheapest setting (every sample leaves at exit 1, deterministically
   within any feasible budget) towards the conservative end, and the last setting
   whose mean cost is certified within the budget is the most accurate one returned.

**Groups.** With `groups=` (user, session or device ids) the unit is the group:
each group's mean loss is one sample of the test and n is the number of groups, so
that the correlated samples of one user do not make the bound over-confident. The
guarantee is then about the risk of a new *group* (each group weighted alike).

**Assumption, and what breaks it.** The calibration units (samples, or groups) and
the deployment units must be exchangeable (drawn from the same distribution). This
breaks when the model is calibrated on data it was trained on (it is over-confident
there: never calibrate on training users), when deployment users, sensors or
conditions differ from the calibration ones, when one user's samples are counted as
independent (pass `groups=`), or when the path is tuned on the calibration data
itself. The guarantee is on the expected risk, not on every batch: a small test set
scatters around it.

**Honest failure.** If not even the first early-exit setting of the path can be
certified (too few samples or groups, epsilon too small, or, for an accuracy drop, a
final exit that does not beat chance), a warning says why (and how many samples would
be needed), the thresholds returned never exit early (`certified` False) and `reason`
keeps the sentence.
"""

import json
import math
import numbers
import warnings

import numpy as np

from keras_egt import atomic, costs, metrics
from keras_egt import exit_rule as _rule
from keras_egt.checks import check_finite_outputs, check_fraction, check_labels, check_number

__all__ = [
    "CalibratedThresholds",
    "calibrate_thresholds",
    "fixed_sequence_test",
    "hoeffding_bentkus_pvalue",
    "shared_threshold_path",
    "threshold_curve",
    "upper_confidence_bound",
]

RISKS = ("accuracy_drop", "disagreement", "macs")


# ---------------------------------------------------------------------------------
# The test


def _binomial_cdf(k, n, p):
    """P(Binomial(n, p) <= k), summed in log space (exact for any n)."""
    if k < 0:
        return 0.0
    if k >= n or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    i = np.arange(int(k), dtype=np.float64)
    # log pmf(j + 1) - log pmf(j) = log((n - j) / (j + 1)) + log(p / (1 - p)), vectorised.
    steps = np.log((n - i) / (i + 1)) + (math.log(p) - math.log1p(-p))
    log_pmf = n * math.log1p(-p) + np.concatenate([[0.0], np.cumsum(steps)])
    top = log_pmf.max()
    return float(min(1.0, math.exp(top) * np.exp(log_pmf - top).sum()))


def _kl_bernoulli(a, b):
    """h(a, b) = a log(a/b) + (1-a) log((1-a)/(1-b)), with 0 log 0 = 0."""
    out = 0.0
    if a > 0:
        out += a * math.log(a / b)
    if a < 1:
        out += (1 - a) * math.log((1 - a) / (1 - b))
    return out


def hoeffding_bentkus_pvalue(risk, n, epsilon):
    """The Hoeffding-Bentkus p-value of "true risk > epsilon".

    `min(exp(-n h(min(r, eps), eps)), e * P(Binomial(n, eps) <= ceil(n r)))` for the
    mean `r` of `n` independent losses in [0, 1] (Bates et al. 2021, Proposition
    3.5). Small values are evidence that the true risk is at most `epsilon`.

    Args:
        risk: the observed mean loss r, in [0, 1].
        n: the number of independent losses (samples or groups), >= 1.
        epsilon: the risk level tested, in [0, 1).

    Returns:
        A p-value in (0, 1].

    Example:
    >>> hoeffding_bentkus_pvalue(0.0, 460, 0.005) < 0.1
    True
    """
    risk, epsilon = float(risk), float(epsilon)
    if not 0.0 <= risk <= 1.0:
        raise ValueError(f"risk must be a mean loss in [0, 1], got {risk}.")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}.")
    if not 0.0 <= epsilon < 1.0:
        raise ValueError(f"epsilon must lie in [0, 1), got {epsilon}.")
    if epsilon == 0.0:
        return 1.0  # "risk > 0" can never be rejected from bounded losses
    hoeffding = math.exp(-n * _kl_bernoulli(min(risk, epsilon), epsilon))
    # The tolerance keeps ceil(n r) from rounding up a mean like 3/7 recomputed in floats.
    bentkus = math.e * _binomial_cdf(math.ceil(n * risk - 1e-9), n, epsilon)
    return float(min(1.0, hoeffding, bentkus))


def upper_confidence_bound(risk, n, delta):
    """The smallest epsilon whose Hoeffding-Bentkus test passes at level `delta`.

    For one setting fixed in advance, the true risk is below this with probability
    at least `1 - delta`.

    Example:
    >>> round(upper_confidence_bound(0.0, 460, 0.1), 4)
    0.005
    """
    lo, hi = float(risk), 1.0
    if hoeffding_bentkus_pvalue(risk, n, lo) <= delta:
        return lo
    for _ in range(60):  # the p-value falls as epsilon grows
        mid = (lo + hi) / 2
        if mid >= 1.0 or hoeffding_bentkus_pvalue(risk, n, mid) > delta:
            lo = mid
        else:
            hi = mid
    return hi


def fixed_sequence_test(p_values, delta):
    """How many hypotheses of a pre-ordered sequence fixed-sequence testing rejects.

    Walks `p_values` in order and stops at the first one above `delta`; the ones
    before it are rejected. The family-wise error rate is at most `delta`.

    Args:
        p_values: p-values in the order fixed beforehand.
        delta: the level.

    Returns:
        The number of leading p-values `<= delta` (0 if the first fails).

    Example:
    >>> fixed_sequence_test([0.01, 0.05, 0.2, 0.01], 0.1)
    2
    """
    count = 0
    for p in p_values:
        if not p <= delta:
            break
        count += 1
    return count


def _samples_needed(risk, epsilon, delta):
    """About how many units the test needs to certify `risk` at `epsilon`, or None."""
    if epsilon <= 0 or risk >= epsilon:
        return None
    n = 1
    while hoeffding_bentkus_pvalue(risk, n, epsilon) > delta:
        n *= 2
        if n > 1 << 30:  # a billion units: no practical amount
            return None
    lo, hi = n // 2, n
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if hoeffding_bentkus_pvalue(risk, mid, epsilon) <= delta:
            hi = mid
        else:
            lo = mid
    return hi


# ---------------------------------------------------------------------------------
# Paths and summaries


def shared_threshold_path(grid=None):
    """The default path: one threshold for every early exit, conservative first.

    `NEVER_EXIT`, then 1 down to 0: every 0.01, plus 0.9999 ... 0.99 (ten points a
    decade, rounded to 6 decimals), where the max-probability thresholds of a confident model lie. The grid
    is fixed, independent of any data.

    Args:
        grid: thresholds to use instead (sorted from high to low here).

    Returns:
        A float64 array of shared thresholds, from `NEVER_EXIT` down to the lowest.

    Example:
    >>> shared_threshold_path()[:3]
    array([2.    , 1.    , 0.9999])
    """
    if grid is None:
        grid = np.concatenate([np.round(np.linspace(0.0, 1.0, 101), 2),
                               np.round(1.0 - 10.0 ** np.linspace(-4, -2, 21), 6)])
    grid = np.asarray(grid, np.float64).reshape(-1)
    if grid.size == 0 or not np.all(np.isfinite(grid)):
        raise ValueError("the threshold grid must be a non-empty list of finite numbers.")
    grid = np.unique(grid[grid < _rule.NEVER_EXIT])[::-1]
    return np.concatenate([[_rule.NEVER_EXIT], grid])


def _path_matrix(path, num_early):
    """The path as an (m, num_early) matrix of early-exit thresholds."""
    if path is None:
        values = shared_threshold_path()
        return np.repeat(values[:, None], num_early, axis=1), "shared"
    matrix = np.asarray(path, np.float64)
    if matrix.ndim == 1:
        matrix = np.repeat(matrix[:, None], num_early, axis=1)
    if matrix.ndim != 2 or matrix.shape[1] != num_early or len(matrix) == 0:
        raise ValueError(
            f"path must be a list of shared thresholds or an (m, {num_early}) array of "
            f"early-exit thresholds, conservative first; got shape {np.shape(path)}."
        )
    if not np.all(np.isfinite(matrix)):
        raise ValueError("path thresholds must be finite numbers.")
    return matrix, "given"


def _full(thresholds):
    """Early-exit thresholds plus the ignored last one."""
    return [float(v) for v in thresholds] + [_rule.NEVER_EXIT]


def threshold_curve(probabilities, y, exit_macs, final_macs, grid=None,
                    criterion="max_probability"):
    """Accuracy and cost of the cascade for one shared threshold at each point of `grid`.

    Args:
        probabilities: array `(K, n, C)` of every exit's probabilities.
        y: labels `(n,)`.
        exit_macs: the K costs of leaving at each exit (`costs.exit_macs`).
        final_macs: cost without early exit (`costs.final_only_macs`).
        grid: thresholds (default 0, 0.01, ..., 1 and `NEVER_EXIT`).
        criterion: the exit criterion.

    Returns:
        A list of dicts `threshold, accuracy, average_macs, speedup, exit_shares`.

    Example:
    >>> curve = threshold_curve(p, y_val, costs.exit_macs(model), costs.final_only_macs(model))
    """
    probabilities = np.asarray(probabilities)
    y = np.asarray(y).reshape(-1)
    if grid is None:
        grid = list(np.round(np.linspace(0.0, 1.0, 101), 2)) + [_rule.NEVER_EXIT]
    num_exits = probabilities.shape[0]
    out = []
    for t in grid:
        labels, exits = _rule.decide(probabilities, _full([t] * (num_exits - 1)), criterion)
        point = {"threshold": float(t)}
        point.update(_rule.exit_summary(exits, num_exits, labels == y, exit_macs, final_macs))
        out.append(point)
    return out


# ---------------------------------------------------------------------------------
# The result


_FIELDS = ("criterion", "objective", "risk", "epsilon", "delta", "confidence", "certified",
           "bound", "n", "num_samples", "groups", "samples_needed", "reason", "path_kind", "path",
           "max_accuracy_drop", "max_disagreement", "mac_budget", "accuracy", "final_accuracy",
           "disagreement", "average_macs", "speedup", "exit_shares", "final_only_macs",
           "oracle", "curve")


class CalibratedThresholds(list):
    """Per-exit thresholds (a plain list, usable as `Cascade(model, threshold=...)`)
    and the record of how they were certified.

    The list holds one threshold per exit; the last is `NEVER_EXIT` (the last exit
    takes whatever reaches it).

    Attributes:
        criterion: the exit criterion they are for.
        objective: `"min_macs"` (cheapest within a risk) or `"max_accuracy"` (within
            `mac_budget`).
        risk: `"accuracy_drop"`, `"disagreement"` or `"macs"`.
        epsilon: the risk level certified (fraction; for `"macs"` the budget scaled to
            [0, 1] between exit 1's and the last exit's cost).
        delta: `1 - confidence`, the allowed probability that the promise fails.
        confidence: `1 - delta`.
        certified: True if an early-exit setting passed the test; False: these
            thresholds never exit early.
        bound: the Hoeffding-Bentkus upper confidence bound (level delta) on the
            returned setting's risk, in the risk's own units (fraction, or MACs per
            sample); at most `max_accuracy_drop` / `max_disagreement` / `mac_budget`.
            The promise is the level itself; the bound says how much room is left.
        n: units of the test (groups if `groups=` was given, else samples).
        num_samples: calibration samples.
        groups: number of groups, or None.
        samples_needed: when not certified, about how many units would be needed
            (None if no amount would do at this epsilon).
        reason: when not certified, why, in one sentence (too few units, a risk at or
            above epsilon, or a final exit at chance); None when certified.
        path_kind: `"shared"` (one threshold for every exit) or `"given"`.
        path: the settings walked, in order: dicts `thresholds`, `risk` (observed),
            `p_value`, `passed`, `average_macs`; the walk stops at the first failure.
        accuracy, final_accuracy: cascade and last-exit accuracy on the calibration
            data (None without labels).
        disagreement: share of calibration samples whose cascade label differs from
            the last exit's.
        average_macs, speedup, exit_shares, final_only_macs: cost figures on the
            calibration data (None without a model).
        oracle: the oracle bound on the calibration data (labels and a model needed).
        curve: the shared-threshold accuracy/cost curve (labels and a model needed).
    """

    def to_dict(self):
        """The thresholds and every attribute, as JSON-ready values."""
        out = {"thresholds": [float(v) for v in self]}
        for name in _FIELDS:
            out[name] = getattr(self, name, None)
        return out

    @classmethod
    def from_dict(cls, data):
        """The inverse of `to_dict`."""
        if "thresholds" not in data:
            raise ValueError("not a CalibratedThresholds dict: no 'thresholds' entry.")
        out = cls(float(v) for v in data["thresholds"])
        for name in _FIELDS:
            setattr(out, name, data.get(name))
        return out

    def to_json(self, path=None):
        """`to_dict()` as JSON text; also written atomically to `path` if given."""
        text = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            atomic.write_text(path, text + "\n")
        return text

    @classmethod
    def from_json(cls, text_or_path):
        """Reads what `to_json` wrote (JSON text or a path to it)."""
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            with open(text) as f:
                text = f.read()
        return cls.from_dict(json.loads(text))

    def describe(self):
        """One line: the promise, whether it was certified, and on how much data."""
        unit = "groups" if self.groups else "samples"
        if self.risk == "macs":
            promise = f"mean MACs <= {self.mac_budget:,.0f}"
            bound = f"{self.bound:,.0f} MACs"
        else:
            what = "accuracy drop" if self.risk == "accuracy_drop" else "disagreement with the last exit"
            promise = f"{what} <= {100 * self.epsilon:.2f} points"
            bound = f"{100 * self.bound:.2f} points"
        if not self.certified:
            why = getattr(self, "reason", None) or (
                f"about {self.samples_needed:,} {unit} needed" if self.samples_needed
                else "no amount of data would do at this level")
            return (f"NOT certified ({promise} at confidence {self.confidence:g}, n = {self.n} "
                    f"{unit}): never exits early; {why}.")
        return (f"certified: {promise} with probability >= {self.confidence:g} "
                f"(Learn then Test, Hoeffding-Bentkus, n = {self.n} {unit}); upper "
                f"confidence bound of this setting {bound}.")


# ---------------------------------------------------------------------------------
# The calibrator


def chance_reason(final_labels, y, num_classes, delta):
    """Why the final exit is not shown to beat chance on `y`, or None if it is.

    One-sided binomial test at the calibration's own level `delta`: under the null
    "the final exit guesses" (accuracy 1 / num_classes, samples independent), the
    p-value is `P(Binomial(n, 1 / num_classes) >= correct)`. A p-value above `delta`
    means the final exit is not shown to beat chance, so "early exit costs no
    accuracy against it" would certify a cascade of guesses.

    Args:
        final_labels: the final exit's labels `(n,)`.
        y: the true labels `(n,)`.
        num_classes: number of classes.
        delta: `1 - confidence`.

    Returns:
        None if the test passes, else one sentence naming the counts, the p-value and
        the fix.

    Example:
    >>> chance_reason(np.zeros(90, int), np.arange(90) % 9, 9, 0.1)[:38]
    'the final exit is at chance on the cal'
    """
    n = len(y)
    correct = int(np.sum(np.asarray(final_labels) == np.asarray(y)))
    p_value = 1.0 - _binomial_cdf(correct - 1, n, 1.0 / num_classes)
    if p_value <= delta:
        return None
    return (f"the final exit is at chance on the calibration data ({correct}/{n} correct = "
            f"{correct / n:.3f}, chance 1/{num_classes} = {1 / num_classes:.3f}; one-sided "
            f"binomial p-value {p_value:.3g} > delta = {delta:.3g}), so no accuracy drop "
            f"relative to it means anything; train the model until its final exit beats "
            f"chance (check batch-norm momentum and the learning rate), or pass more "
            f"calibration samples")


def _check_fraction(value, name):
    return check_fraction(value, name, include_one=False)


def _id_kind(value):
    """`"integer"`, `"string"` or `"bytes"` for a usable group id, else None."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, numbers.Integral):
        return "integer"
    if isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer():
        return "integer"  # 3.0, as a float column of ids reads
    if isinstance(value, str):
        return "string"
    if isinstance(value, bytes):
        return "bytes"
    return None


def _group_ids(groups, n):
    """`groups` as a 1-D int64 or string array of `n` ids, or a one-line ValueError.

    Ids are whole numbers or strings, one kind for all: None, NaN, bools and
    fractions are refused (a missing id is no group), and a mix such as 1 and "1"
    is refused rather than compared as text.
    """
    shown = " ".join(repr(groups).split())[:80]  # one line, also for a 2-D array
    try:
        values = np.asarray(groups, dtype=object)
    except ValueError:  # ragged nested lists
        values = np.empty(0, object)
    if values.ndim != 1 or len(values) != n:
        raise ValueError(
            f"groups must hold one id per calibration sample ({n}), e.g. the user id of "
            f"each: pass a 1-D list or array of {n} ids, or groups=None. Received: groups "
            f"of shape {np.shape(values)} ({shown})."
        )
    kinds = [_id_kind(v) for v in values]
    bad = [v for v, kind in zip(values, kinds) if kind is None]
    if bad:
        examples = list(dict.fromkeys(repr(v) for v in bad))[:3]
        raise ValueError(
            f"groups must hold whole numbers or strings (user, session or device ids); "
            f"{len(bad)} of {n} are not (e.g. {', '.join(examples)}): give "
            f"every sample a real id, or drop the samples without one. Received: groups={shown}."
        )
    if len(set(kinds)) > 1:
        raise ValueError(
            f"groups mixes {' and '.join(sorted(set(kinds)))} ids, which would be compared "
            f"as text (1 and '1' one group): use one kind for every id, e.g. "
            f"[str(g) for g in groups]. Received: groups={shown}."
        )
    if kinds and kinds[0] == "integer":
        return np.asarray([int(v) for v in values], np.int64)
    return np.asarray(list(values))


def _group_index(groups, n):
    _, index = np.unique(_group_ids(groups, n), return_inverse=True)
    count = int(index.max()) + 1 if n else 0
    if count < 2:
        raise ValueError(
            f"groups holds {count} distinct id(s); the bound is computed over groups and "
            "needs at least 2 (pass user, session or device ids, or groups=None)."
        )
    return index.reshape(-1), count


def calibrate_thresholds(model, x, y=None, max_accuracy_drop=0.005, *, confidence=0.9,
                         groups=None, max_disagreement=None, mac_budget=None,
                         criterion="max_probability", path=None,
                         batch_size=metrics.DEFAULT_BATCH_SIZE, probabilities=None):
    """Exit thresholds whose risk on new data is certified (Learn then Test).

    See the module docstring for the procedure and its assumption. One of:

    * labels `y` and `max_accuracy_drop=eps` (default): with probability at least
      `confidence`, early exit costs at most `eps` accuracy against the last exit
      alone (the per-sample gap `clip(1[cascade wrong] - 1[last wrong], 0, 1)`);
    * `y=None, max_disagreement=eps`: no labels; with probability at least
      `confidence`, at most a share `eps` of the cascade's labels differ from the
      last exit's (this bounds the accuracy gap too);
    * `mac_budget=B`: the most accurate setting of the path whose mean MACs per
      sample are certified `<= B` (labels not needed; `max_accuracy_drop` is then
      ignored).

    The exits' probabilities are computed once; the walk along the path runs in
    numpy on them, with the cascade's own exit rule (`keras_egt.exit_rule.decide`).

    Args:
        model: an early-exit model (for the probabilities and the MAC costs), or
            None if `probabilities` are given (then no MAC figures).
        x: calibration inputs `(n, H, W, C)`, from the deployment population and
            never from the training data (None if `probabilities` are given).
        y: their labels, or None for label-free calibration.
        max_accuracy_drop: eps for the accuracy gap, a fraction in [0, 1).
        confidence: `1 - delta`, in (0, 1): the probability that the promise holds.
        groups: optional group id per sample (user, session, device): the test then
            runs over groups, n = the number of groups (at least 2).
        max_disagreement: eps for the label-free risk, a fraction in [0, 1).
        mac_budget: mean MACs per sample allowed (e.g.
            `0.5 * costs.final_only_macs(model)`), or None.
        criterion: `"max_probability"` or `"entropy"`.
        path: None (one shared threshold, `shared_threshold_path()`), a list of
            shared thresholds, or an `(m, K - 1)` array of early-exit thresholds,
            ordered from the most conservative to the most aggressive and fixed
            without looking at the calibration data.
        batch_size: batch size of the single inference pass.
        probabilities: the exits' probabilities `(K, n, C)` if already computed
            (`metrics.exit_probabilities`; then `x` is not run).

    Returns:
        A `CalibratedThresholds`: a list of K thresholds (the last is `NEVER_EXIT`)
        with `certified`, `bound`, `epsilon`, `delta`, `n`, `path` and the cascade's
        figures on the calibration data.

    Example:
    >>> cal = calibrate_thresholds(model, x_cal, y_cal, max_accuracy_drop=0.005,
    ...                            confidence=0.9, groups=user_ids)
    >>> cal.certified, cal.bound
    >>> cascade = Cascade(model, threshold=cal)
    >>> field = calibrate_thresholds(model, x_field, None, max_disagreement=0.01)
    """
    _rule.resolve_criterion(None, criterion)
    delta_conf = float(confidence)
    if not 0.0 < delta_conf < 1.0:
        raise ValueError(
            f"confidence must lie in (0, 1) (the probability that the promise holds, "
            f"1 - delta; e.g. 0.9), got {confidence}."
        )
    delta = 1.0 - delta_conf
    if mac_budget is not None and max_disagreement is not None:
        raise ValueError("give either mac_budget or max_disagreement, not both.")
    if mac_budget is not None:
        check_number(mac_budget, "mac_budget", minimum=0)
        risk_kind = "macs"
    elif max_disagreement is not None:
        risk_kind = "disagreement"
        epsilon = _check_fraction(max_disagreement, "max_disagreement")
    else:
        if y is None:
            raise ValueError(
                "max_accuracy_drop needs labels y. Without labels, calibrate on the "
                "agreement with the last exit: calibrate_thresholds(model, x, None, "
                "max_disagreement=0.01)."
            )
        risk_kind = "accuracy_drop"
        epsilon = _check_fraction(max_accuracy_drop, "max_accuracy_drop")

    if probabilities is None:
        if model is None or x is None:
            raise ValueError("calibrate_thresholds needs a model and x, or probabilities.")
        if groups is not None:
            _group_ids(groups, len(x))  # bad ids fail before the inference pass
        probabilities = metrics.exit_probabilities(model, x, batch_size)
    probabilities = check_finite_outputs(np.asarray(probabilities, np.float64), "probabilities")
    if probabilities.ndim != 3 or probabilities.shape[0] < 2:
        raise ValueError(
            "probabilities must have shape (num_exits >= 2, n, num_classes), got "
            f"{probabilities.shape}."
        )
    num_exits, n, num_classes = probabilities.shape
    if n == 0:
        raise ValueError("calibrate_thresholds needs at least one calibration sample.")
    if y is not None:
        y = np.asarray(y).reshape(-1)
        check_labels(y, num_classes, "y", n)
    if groups is not None:
        group_index, num_groups = _group_index(groups, n)
    else:
        group_index, num_groups = None, None
    units = n if groups is None else num_groups

    exit_macs = final_macs = None
    if model is not None:
        exit_macs = np.asarray(costs.exit_macs(model), np.float64)
        final_macs = float(costs.final_only_macs(model))
        if len(exit_macs) != num_exits:
            raise ValueError(f"the model has {len(exit_macs)} exits, probabilities {num_exits}.")
    if risk_kind == "macs":
        if exit_macs is None:
            raise ValueError("mac_budget needs the model (for the exits' MAC costs).")
        budget = float(mac_budget)
        low, high = float(exit_macs[0]), float(exit_macs[-1])
        if not budget >= low:
            raise ValueError(
                f"mac_budget {mac_budget} is below the cost of exit 1 alone ({int(low)} "
                "MACs), the cheapest any cascade can be."
            )
        epsilon = min(1.0, (budget - low) / (high - low)) if high > low else 1.0

    matrix, path_kind = _path_matrix(path, num_exits - 1)
    final_labels = probabilities[-1].argmax(-1)
    # Only this promise is relative to the final exit's accuracy; a MAC bound or an
    # agreement bound holds whatever the final exit is worth.
    reason = chance_reason(final_labels, y, num_classes, delta) if risk_kind == "accuracy_drop" else None

    def losses(labels, exits):
        if risk_kind == "accuracy_drop":
            return ((labels != y) & (final_labels == y)).astype(np.float64)
        if risk_kind == "disagreement":
            return (labels != final_labels).astype(np.float64)
        return (exit_macs[exits] - low) / (high - low) if high > low else np.zeros(n)

    def observed(loss):
        if group_index is None:
            return float(loss.mean())
        means = np.bincount(group_index, weights=loss) / np.bincount(group_index)
        return float(np.clip(means.mean(), 0.0, 1.0))

    if risk_kind == "macs":
        # Cheapest first: every sample at exit 1 costs exactly exit 1's MACs, so that
        # end needs no test (nor do its copies on the path).
        matrix = matrix[~np.all(matrix <= 0.0, axis=1)]
        order = np.concatenate([np.zeros((1, num_exits - 1)), matrix[::-1]])
    else:
        # Most conservative first: never exiting early has zero risk by construction.
        matrix = matrix[~np.all(matrix > 1.0, axis=1)]
        order = np.concatenate([np.full((1, num_exits - 1), _rule.NEVER_EXIT), matrix])

    if reason is not None:
        order = order[:1]  # never exit early: nothing is tested
    walked, selected, selected_risk = [], order[0], 0.0
    trivial = risk_kind == "macs" and epsilon >= 1.0
    for point in order[1:]:
        labels, exits = _rule.decide(probabilities, _full(point), criterion)
        risk = observed(losses(labels, exits))
        p_value = 0.0 if trivial else hoeffding_bentkus_pvalue(risk, units, epsilon)
        passed = p_value <= delta
        walked.append({
            "thresholds": [float(v) for v in point], "risk": risk, "p_value": p_value,
            "passed": bool(passed),
            "average_macs": None if exit_macs is None else _rule.average_cost(exits, exit_macs),
        })
        if not passed:
            break
        selected, selected_risk = point, risk
    accepted = sum(w["passed"] for w in walked)
    certified = risk_kind == "macs" or accepted > 0

    samples_needed = None
    if not certified and reason is None:
        first = walked[0]["risk"] if walked else 0.0
        samples_needed = _samples_needed(first, epsilon, delta)
        unit = "groups" if groups is not None else "samples"
        if samples_needed is None and epsilon == 0:
            why = ("epsilon = 0 cannot be certified from any amount of data (no amount of "
                   "data rules out a tiny risk); allow a risk above 0")
        elif samples_needed is None:
            why = (f"the most conservative early-exit setting shows a risk of {first:.4f} "
                   f"on these {units} {unit}, "
                   + ("at or above" if first >= epsilon else "so close to")
                   + f" epsilon = {epsilon:g} that no practical amount of data certifies it; "
                   "raise the allowed risk or improve the early exits")
        else:
            why = (f"certifying even the most conservative early-exit setting at "
                   f"epsilon = {epsilon:g}, confidence {delta_conf:g} needs about "
                   f"{samples_needed:,} {unit} (observed risk {first:.4f}), not {units}")
        reason = why
    if not certified:
        warnings.warn(f"calibrate_thresholds: no early-exit setting could be certified: "
                      f"{reason}. The thresholds returned never exit early.", stacklevel=2)

    if trivial or (risk_kind == "macs" and not accepted):
        ucb = selected_risk if trivial else 0.0
    else:
        ucb = upper_confidence_bound(selected_risk, units, delta) if certified else 0.0
    thresholds = CalibratedThresholds(_full(selected))
    labels, exits = _rule.decide(probabilities, thresholds, criterion)
    rows = np.arange(n)
    correct = None if y is None else np.argmax(probabilities, -1) == y[None]
    summary = _rule.exit_summary(exits, num_exits, None if y is None else labels == y,
                                 exit_macs, final_macs)
    thresholds.criterion = criterion
    thresholds.objective = "max_accuracy" if risk_kind == "macs" else "min_macs"
    thresholds.risk = risk_kind
    thresholds.epsilon = float(epsilon)
    thresholds.delta = delta
    thresholds.confidence = delta_conf
    thresholds.certified = bool(certified)
    if risk_kind == "macs":
        thresholds.bound = low + ucb * (high - low)
    else:
        thresholds.bound = float(ucb)
    thresholds.n = int(units)
    thresholds.num_samples = int(n)
    thresholds.groups = num_groups
    thresholds.samples_needed = samples_needed
    thresholds.reason = reason
    thresholds.path_kind = path_kind
    thresholds.path = walked
    thresholds.max_accuracy_drop = float(epsilon) if risk_kind == "accuracy_drop" else None
    thresholds.max_disagreement = float(epsilon) if risk_kind == "disagreement" else None
    thresholds.mac_budget = None if mac_budget is None else float(mac_budget)
    thresholds.accuracy = summary["accuracy"]
    thresholds.final_accuracy = None if y is None else float(correct[-1].mean())
    thresholds.disagreement = float(np.mean(labels != final_labels))
    thresholds.average_macs = summary["average_macs"]
    thresholds.speedup = summary["speedup"]
    thresholds.exit_shares = summary["exit_shares"]
    thresholds.final_only_macs = final_macs
    thresholds.oracle = None
    thresholds.curve = None
    if y is not None and exit_macs is not None:
        oracle = _rule.oracle_exits(correct)
        thresholds.oracle = _rule.exit_summary(oracle, num_exits, correct[oracle, rows],
                                               exit_macs, final_macs)
        thresholds.curve = threshold_curve(probabilities, y, exit_macs, final_macs,
                                           criterion=criterion)
    return thresholds
