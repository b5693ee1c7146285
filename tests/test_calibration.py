import json
import math
import warnings

import numpy as np
import pytest
from scipy import special, stats

from keras_egt import calibration, cascade, costs, metrics
from keras_egt.calibration import calibrate_thresholds
from keras_egt.cnn import EarlyExitCNN
from kit import blob_task

WIDTHS = (4, 8, 8, 8, 8)
NEVER = cascade.NEVER_EXIT


def _reference_pvalue(risk, n, epsilon):
    """Hoeffding term (scipy's relative entropy) and Bentkus term (scipy's binomial CDF)."""
    a = min(risk, epsilon)
    kl = special.rel_entr(a, epsilon) + special.rel_entr(1 - a, 1 - epsilon)
    hoeffding = math.exp(-n * kl)
    bentkus = math.e * stats.binom.cdf(math.ceil(n * risk), n, epsilon)
    return min(1.0, hoeffding, bentkus)


def _synthetic(n, rng, num_classes=2):
    """Exit 1 with confidence c ~ U(0.5, 1), wrong with probability 2 (1 - c); exits 2-4
    never confident (uniform); exit 5 always right. A shared threshold t in [0.5, 1]
    then has the true accuracy-gap risk R(t) = int_t^1 2 * 2 (1 - c) dc = 2 (1 - t)^2."""
    c = rng.uniform(0.5, 1.0, n)
    wrong = rng.random(n) < 2 * (1 - c)
    y = rng.integers(0, num_classes, n)
    predicted = np.where(wrong, (y + 1) % num_classes, y)
    p = np.full((5, n, num_classes), 1.0 / num_classes)
    p[0] = (1 - c)[:, None] / (num_classes - 1)
    p[0, np.arange(n), predicted] = c
    p[4] = np.eye(num_classes)[y]
    return p, y


def _true_risk(threshold):
    t = min(float(threshold), 1.0)
    return 0.0 if threshold > 1.0 else 2 * (1 - max(t, 0.5)) ** 2


# --- the test ----------------------------------------------------------------------


@pytest.mark.parametrize("risk, n, epsilon", [
    (0.0, 460, 0.005), (0.0, 100, 0.05), (0.01, 1000, 0.02), (3 / 7, 7, 0.6),
    (0.1, 50, 0.1), (0.2, 50, 0.1), (0.004, 2500, 0.005), (0.05, 400, 0.1),
    (1.0, 10, 0.5), (0.3, 1, 0.9),
])
def test_hoeffding_bentkus_matches_scipy(risk, n, epsilon):
    ours = calibration.hoeffding_bentkus_pvalue(risk, n, epsilon)
    assert ours == pytest.approx(_reference_pvalue(risk, n, epsilon), rel=1e-9, abs=1e-300)


def test_hoeffding_bentkus_hand_made():
    # No losses at all: min((1 - eps)^n, e (1 - eps)^n) = (1 - eps)^n.
    assert calibration.hoeffding_bentkus_pvalue(0.0, 100, 0.05) == pytest.approx(0.95 ** 100)
    # An observed risk at or above epsilon is no evidence against "risk > epsilon".
    assert calibration.hoeffding_bentkus_pvalue(0.1, 1000, 0.1) == 1.0
    # epsilon = 0 can never be certified from bounded losses.
    assert calibration.hoeffding_bentkus_pvalue(0.0, 10 ** 6, 0.0) == 1.0
    with pytest.raises(ValueError, match="epsilon"):
        calibration.hoeffding_bentkus_pvalue(0.0, 10, 1.0)
    with pytest.raises(ValueError, match="risk"):
        calibration.hoeffding_bentkus_pvalue(1.5, 10, 0.1)


@pytest.mark.parametrize("risk, n", [(0.0, 460), (0.01, 1000), (0.2, 30)])
def test_upper_confidence_bound_is_the_smallest_passing_level(risk, n):
    ucb = calibration.upper_confidence_bound(risk, n, 0.1)
    assert risk <= ucb < 1
    assert _reference_pvalue(risk, n, ucb + 1e-9) <= 0.1
    assert _reference_pvalue(risk, n, ucb - 1e-6) > 0.1


def test_fixed_sequence_stops_at_the_first_failure():
    assert calibration.fixed_sequence_test([0.01, 0.05, 0.2, 0.01], 0.1) == 2
    assert calibration.fixed_sequence_test([0.5, 0.01], 0.1) == 0
    assert calibration.fixed_sequence_test([0.1, 0.1], 0.1) == 2
    assert calibration.fixed_sequence_test([], 0.1) == 0


def test_calibration_walk_stops_at_the_first_failure():
    # Setting A lets confident, right samples out at exit 1; B lets everything out at
    # exit 2, which is always wrong; C lets confident, right samples out at exit 3.
    # C would pass on its own, but the walk A -> B -> C stops at B.
    rng = np.random.default_rng(0)
    n = 400
    y = rng.integers(0, 3, n)
    p = np.full((5, n, 3), 1 / 3)
    p[0, : n // 2] = 0.02
    p[0, np.arange(n // 2), y[: n // 2]] = 0.96
    p[1] = np.eye(3)[(y + 1) % 3]
    p[2] = np.eye(3)[y]
    p[4] = np.eye(3)[y]
    a, b, c = [0.95, NEVER, NEVER, NEVER], [NEVER, 0.5, NEVER, NEVER], [NEVER, NEVER, 0.95, NEVER]
    cal = calibrate_thresholds(None, None, y, 0.05, probabilities=p, path=[a, b, c])
    assert list(cal) == a + [NEVER]
    assert [w["passed"] for w in cal.path] == [True, False]
    assert cal.path[1]["risk"] == 1.0
    alone = calibrate_thresholds(None, None, y, 0.05, probabilities=p, path=[c])
    assert alone.certified and list(alone) == c + [NEVER]


def test_hand_made_shared_threshold():
    # Exit 1 is confident and right on samples 0-2 (0.9, 0.95, 0.99), wrong on sample 3
    # (0.8); exits 2-4 are never confident; exit 5 is right. With eps = 0.5, n = 4:
    # risk 0 passes ((1/2)^4 = 0.0625 <= 0.1) down to threshold 0.81; at 0.80 sample 3
    # leaves wrongly, risk 1/4 fails (p = min(0.59, e 5/16) > 0.1).
    y = np.array([0, 1, 0, 1])
    p = np.full((5, 4, 3), 1 / 3)
    p[0] = [[0.9, 0.05, 0.05], [0.05, 0.95, 0.0], [0.99, 0.0, 0.01], [0.8, 0.1, 0.1]]
    p[4] = np.eye(3)[y]
    cal = calibrate_thresholds(None, None, y, 0.5, probabilities=p)
    assert cal.certified
    assert cal[0] == pytest.approx(0.81)
    assert cal.path[-1]["thresholds"][0] == pytest.approx(0.80)
    assert not cal.path[-1]["passed"] and all(w["passed"] for w in cal.path[:-1])
    assert cal.accuracy == 1.0 and cal.exit_shares == [0.75, 0.0, 0.0, 0.0, 0.25]
    assert cal.bound == pytest.approx(calibration.upper_confidence_bound(0.0, 4, 0.1))
    assert cascade.decide(p, cal, cal.criterion)[1].tolist() == [0, 0, 0, 4]


# --- the guarantee ------------------------------------------------------------------

DRAWS = 200
DELTA = 0.1
# If P(risk > eps) <= delta, the failures in DRAWS independent draws are at most
# Binomial(DRAWS, delta): above its 0.999 quantile (33 of 200) with probability < 0.001.
MAX_FAILURES = int(stats.binom.ppf(0.999, DRAWS, DELTA))


def test_realised_risk_exceeds_epsilon_in_at_most_about_delta_of_draws():
    rng = np.random.default_rng(2024)
    epsilon = 0.02  # R(t) <= eps iff t >= 0.9
    failures, certified, thresholds = 0, 0, []
    for _ in range(DRAWS):
        p, y = _synthetic(1000, rng)
        cal = calibrate_thresholds(None, None, y, epsilon, confidence=1 - DELTA,
                                   probabilities=p)
        failures += _true_risk(cal[0]) > epsilon
        certified += cal.certified
        thresholds.append(min(cal[0], 1.0))
    assert failures <= MAX_FAILURES
    # Not vacuous: n = 1000 is enough to certify some early exit nearly every time.
    assert certified >= 0.9 * DRAWS
    assert np.median(thresholds) < 0.97


def test_groups_guarantee_holds_for_correlated_users():
    # Each user is sloppy or careful as a whole: a user's exit 1 is wrong with
    # probability min(1, 4 (1 - c)) (sloppy, half the users) or never (careful), 10
    # samples per user. Per-sample tests
    # treat the 10 as independent; over groups the unit is the user.
    rng = np.random.default_rng(7)
    epsilon, users, per_user = 0.02, 150, 10
    failures = 0
    for _ in range(DRAWS):
        p, y = _synthetic(users * per_user, rng)
        groups = np.repeat(np.arange(users), per_user)
        sloppy = np.repeat(rng.random(users) < 0.5, per_user)
        c = p[0].max(-1)
        wrong = rng.random(len(y)) < np.where(sloppy, np.minimum(1.0, 4 * (1 - c)), 0.0)
        # Population risk at t: int_t^1 2 * min(1, 4 (1 - c)) / 2 dc = 2 (1 - t)^2 for
        # t >= 0.75, and above eps = 0.02 for every t < 0.9, as in `_true_risk`.
        predicted = np.where(wrong, 1 - y, y)
        p[0] = np.stack([1 - c, c], -1)
        p[0][predicted == 0] = p[0][predicted == 0][:, ::-1]
        cal = calibrate_thresholds(None, None, y, epsilon, confidence=1 - DELTA,
                                   groups=groups, probabilities=p)
        failures += _true_risk(cal[0]) > epsilon
    assert failures <= MAX_FAILURES


def test_label_free_mode_never_needs_labels():
    rng = np.random.default_rng(3)
    p, _ = _synthetic(2000, rng)
    cal = calibrate_thresholds(None, None, None, max_disagreement=0.02, probabilities=p)
    assert cal.certified and cal.risk == "disagreement"
    assert cal.accuracy is None and cal.final_accuracy is None
    labels, _ = cascade.decide(p, cal, cal.criterion)
    observed = float(np.mean(labels != p[4].argmax(-1)))
    assert observed == pytest.approx(cal.disagreement)
    assert observed <= cal.bound <= 0.02
    # Disagreement bounds the accuracy gap, so it is the stricter of the two.
    with_labels = calibrate_thresholds(None, None, p[4].argmax(-1), 0.02, probabilities=p)
    assert cal[0] >= with_labels[0]


@pytest.mark.parametrize("groups", [False, True])
def test_too_little_data_never_exits_and_warns(groups):
    rng = np.random.default_rng(0)
    p, y = _synthetic(50, rng)
    kwargs = {"groups": np.arange(50) % 10} if groups else {}
    with pytest.warns(UserWarning, match="never exit early") as record:
        cal = calibrate_thresholds(None, None, y, 0.01, probabilities=p, **kwargs)
    assert not cal.certified
    assert list(cal) == [NEVER] * 5
    assert np.all(cascade.decide(p, cal)[1] == 4)
    # Certifying zero observed risk at eps = 0.01, delta = 0.1 takes
    # ceil(log(0.1) / log(0.99)) = 230 units.
    assert cal.samples_needed == math.ceil(math.log(0.1) / math.log(0.99))
    unit = "groups" if groups else "samples"
    assert f"{cal.samples_needed:,} {unit}" in str(record[0].message)
    assert "NOT certified" in cal.describe()


def test_epsilon_zero_is_never_certified():
    rng = np.random.default_rng(0)
    p, y = _synthetic(500, rng)
    with pytest.warns(UserWarning, match="no amount of data"):
        cal = calibrate_thresholds(None, None, y, 0.0, probabilities=p)
    assert not cal.certified and cal.samples_needed is None
    # An exit 1 that is sure and always wrong: the first setting already fails at eps.
    p[0] = np.eye(2)[1 - y]
    with pytest.warns(UserWarning, match="at or above epsilon = 0.1"):
        cal = calibrate_thresholds(None, None, y, 0.1, probabilities=p)
    assert not cal.certified and cal.samples_needed is None and cal.path[0]["risk"] == 1.0


# --- bad input ---------------------------------------------------------------------


def test_bad_inputs_get_clear_errors():
    rng = np.random.default_rng(0)
    p, y = _synthetic(20, rng)
    for eps in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"max_accuracy_drop must be a fraction in \[0, 1\)"):
            calibrate_thresholds(None, None, y, eps, probabilities=p)
    with pytest.raises(ValueError, match=r"max_disagreement must be a fraction in \[0, 1\)"):
        calibrate_thresholds(None, None, None, max_disagreement=1.0, probabilities=p)
    for conf in (0.0, 1.0, 1.2):
        with pytest.raises(ValueError, match=r"confidence must lie in \(0, 1\)"):
            calibrate_thresholds(None, None, y, 0.01, confidence=conf, probabilities=p)
    with pytest.raises(ValueError, match="at least 2"):
        calibrate_thresholds(None, None, y, 0.01, groups=np.zeros(20), probabilities=p)
    with pytest.raises(ValueError, match="one id per calibration sample"):
        calibrate_thresholds(None, None, y, 0.01, groups=np.arange(19), probabilities=p)
    with pytest.raises(ValueError, match="20 inputs but 19 labels"):
        calibrate_thresholds(None, None, y[:19], 0.01, probabilities=p)
    with pytest.raises(ValueError, match="max_disagreement=0.01"):
        calibrate_thresholds(None, None, None, probabilities=p)
    with pytest.raises(ValueError, match="criterion"):
        calibrate_thresholds(None, None, y, 0.01, criterion="margin", probabilities=p)
    with pytest.raises(ValueError, match="path"):
        calibrate_thresholds(None, None, y, 0.01, path=np.zeros((3, 2)), probabilities=p)


# --- the result --------------------------------------------------------------------


def test_result_serialises_and_still_drives_the_cascade():
    rng = np.random.default_rng(1)
    p, y = _synthetic(1000, rng)
    cal = calibrate_thresholds(None, None, y, 0.02, criterion="entropy", probabilities=p,
                               groups=np.arange(1000) % 200)
    data = json.loads(json.dumps(cal.to_dict()))
    back = calibration.CalibratedThresholds.from_dict(data)
    assert list(back) == list(cal) and back.to_dict() == cal.to_dict()
    assert calibration.CalibratedThresholds.from_json(cal.to_json()).to_dict() == cal.to_dict()
    for name, value in [("epsilon", 0.02), ("delta", pytest.approx(0.1)), ("n", 200),
                        ("groups", 200), ("num_samples", 1000), ("criterion", "entropy")]:
        assert data[name] == value
    assert data["certified"] and data["path"] and data["bound"] <= 0.02
    assert cascade.resolve_criterion(back) == "entropy"
    with pytest.raises(ValueError, match="calibrated for criterion 'entropy'"):
        cascade.resolve_criterion(back, "max_probability")


# --- a real model -------------------------------------------------------------------


@pytest.fixture(scope="module")
def setup():
    model = EarlyExitCNN(3, (32, 32, 2), widths=WIDTHS)
    x, y = blob_task(n=60, size=32)
    return model, x, y, metrics.exit_probabilities(model, x)


def test_real_model_calibration_matches_a_cascade_run(setup):
    model, x, _, probabilities = setup
    # The untrained model is at chance on the blob labels, which calibration now
    # refuses; labels the final exit gets 3 in 4 right keep the comparison meaningful.
    y = probabilities[-1].argmax(-1)
    y[::4] = (y[::4] + 1) % 3
    cal = calibrate_thresholds(model, x, y, 0.1, confidence=0.8)
    again = calibrate_thresholds(model, None, y, 0.1, confidence=0.8, probabilities=probabilities)
    assert list(cal) == list(again)
    labels, exits = cascade.Cascade(model, cal).predict(x, batch_size=16)
    assert float(np.mean(labels == y)) == pytest.approx(cal.accuracy)
    assert float(np.mean(np.array(costs.exit_macs(model))[exits])) == pytest.approx(cal.average_macs)
    final = probabilities[-1].argmax(-1)
    gap = float(np.mean((labels != y) & (final == y)))
    if cal.certified:
        assert gap <= cal.bound <= 0.1
    else:
        assert np.all(exits == 4)
    assert cal.curve and cal.oracle["average_macs"] <= costs.exit_macs(model)[-1]


def test_real_model_mac_budget(setup):
    model, x, y, probabilities = setup
    macs = costs.exit_macs(model)
    budget = (macs[0] + macs[-1]) / 2
    cal = calibrate_thresholds(model, None, y, mac_budget=budget, probabilities=probabilities)
    assert cal.objective == "max_accuracy" and cal.certified
    assert cal.average_macs <= cal.bound <= budget
    # The walk went from the cheapest setting towards the conservative end.
    assert all(w["passed"] for w in cal.path[:-1])
    averages = [w["average_macs"] for w in cal.path]
    assert averages == sorted(averages)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        everything = calibrate_thresholds(model, None, None, mac_budget=macs[-1],
                                          probabilities=probabilities)
    assert list(everything) == [NEVER] * 5
    with pytest.raises(ValueError, match="below the cost of exit 1"):
        calibrate_thresholds(model, None, y, mac_budget=10, probabilities=probabilities)
