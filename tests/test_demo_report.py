"""The demo's calibration record: summary.json's promise and the report's sentence."""

import types
import warnings

import numpy as np
import pytest

from keras_egt import calibration, cascade, metrics
from keras_egt.cli import demo
from keras_egt.cnn import EarlyExitCNN

NUM_CLASSES, USERS, PER_USER = 9, 300, 3


def _probabilities(final_correct):
    """Exit 1 sure and right on every sample, exits 2-4 unsure, the final exit right on
    the samples `final_correct` marks and else sure of the next class."""
    n = len(final_correct)
    y = np.arange(n) % NUM_CLASSES
    p = np.full((5, n, NUM_CLASSES), 1.0 / NUM_CLASSES)
    p[0] = np.eye(NUM_CLASSES)[y] * 0.96 + 0.04 / NUM_CLASSES
    final = np.where(final_correct, y, (y + 1) % NUM_CLASSES)
    p[4] = np.eye(NUM_CLASSES)[final]
    return p, y, np.repeat(np.arange(n // PER_USER), PER_USER)


@pytest.fixture(scope="module")
def model():
    return EarlyExitCNN(NUM_CLASSES, (32, 32, 2), widths=(4, 8, 8, 8, 8))


def _inputs(y):
    """Stand-in inputs, one per label: the tests hand the calibrator their probabilities."""
    return np.zeros((len(y), 32, 32, 2), "float32")


def _calibrated(p, y, users):
    return calibration.calibrate_thresholds(None, None, y, demo.CALIBRATION["max_accuracy_drop"],
                                            confidence=demo.CALIBRATION["confidence"],
                                            groups=users, probabilities=p)


def test_promise_is_the_calibrators_own_record():
    p, y, users = _probabilities(np.ones(USERS * PER_USER, bool))
    cal = _calibrated(p, y, users)
    assert cal.certified and 0 < cal.bound <= 0.01
    promise = demo._promise(cal)
    for name in demo.PROMISE_FIELDS:
        assert promise[name] == getattr(cal, name), name
    assert (promise["epsilon"], promise["confidence"]) == (0.01, 0.9)
    counts = (promise["n"], promise["groups"], promise["num_samples"])
    assert counts == (USERS, USERS, USERS * PER_USER)
    assert promise["reason"] is None and promise["statement"] == cal.describe()


def test_calibration_text_states_the_same_numbers():
    p, y, users = _probabilities(np.ones(USERS * PER_USER, bool))
    cal = _calibrated(p, y, users)
    measured = types.SimpleNamespace(accuracy=0.95, final_accuracy=0.96, mac_speedup=2.0)
    text = demo._calibration_text(cal, measured)
    assert f"calibrated on {USERS * PER_USER} samples of {USERS} held-out users" in text
    assert demo._promise(cal)["statement"] in text
    # epsilon, confidence, n and the bound, as describe() words them.
    for part in ("accuracy drop <= 1.00 points", "probability >= 0.9", f"n = {USERS} groups",
                 f"bound of this setting {100 * cal.bound:.2f} points"):
        assert part in text
    assert "1.00-point drop (95.00% vs 96.00% without early exit), 2.00x MAC speedup" in text


def test_calibrate_says_not_certified_when_the_final_exit_is_at_chance(model, monkeypatch):
    # 1 in 9 right: what a final exit that guesses gets.
    p, y, users = _probabilities(np.arange(USERS * PER_USER) % NUM_CLASSES == 0)
    monkeypatch.setattr(metrics, "exit_probabilities", lambda *args: p)
    with pytest.warns(UserWarning, match="at chance"):
        cal = _calibrated(p, y, users)
    # The demo asks the calibrator, and the report does not repeat its warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        asked = demo._calibrate(model, _inputs(y), y, users)
    assert list(asked) == list(cal) and asked.reason == cal.reason
    assert list(cal) == [cascade.NEVER_EXIT] * 5
    assert cal.certified is False and "at chance" in cal.reason
    promise = demo._promise(cal)
    assert (promise["epsilon"], promise["confidence"]) == (0.01, 0.9)
    assert promise["risk"] == "accuracy_drop"
    counts = (promise["n"], promise["groups"], promise["num_samples"])
    assert counts == (USERS, USERS, USERS * PER_USER)
    assert promise["reason"] == cal.reason
    assert promise["statement"].startswith("NOT certified") and cal.reason in promise["statement"]
    # The thresholds still drive a cascade: every sample goes to the final exit.
    _, exits = cascade.Cascade(model, threshold=cal).decide(p)
    assert (exits == 4).all()


def test_calibrate_certifies_as_the_calibrator_when_above_chance(model, monkeypatch):
    p, y, users = _probabilities(np.ones(USERS * PER_USER, bool))
    monkeypatch.setattr(metrics, "exit_probabilities", lambda *args: p)
    cal = demo._calibrate(model, _inputs(y), y, users)
    expected = calibration.calibrate_thresholds(
        model, None, y, 0.01, confidence=0.9, groups=users, probabilities=p)
    assert list(cal) == list(expected) and cal.certified and cal.bound == expected.bound
    assert cal.reason is None


def test_timing_progress_bar_runs_over_the_timed_samples(model, monkeypatch):
    import keras

    from keras_egt import evaluation

    bars, progbar = [], keras.utils.Progbar

    class Recorded(progbar):
        def __init__(self, target, *args, **kwargs):
            super().__init__(target, *args, **kwargs)
            bars.append([target, kwargs.get("unit_name"), 0])

        def update(self, current, *args, **kwargs):
            bars[-1][2] = current
            return super().update(current, *args, **kwargs)

    monkeypatch.setattr(keras.utils, "Progbar", Recorded)
    x = np.random.default_rng(0).random((6, 32, 32, 2)).astype("float32")
    evaluation.time_per_sample(model, x, 0.5, samples=4, warmup=1)
    assert bars == []  # quiet by default, as before
    timing = evaluation.time_per_sample(model, x, 0.5, samples=4, warmup=1, verbose=1)
    assert bars == [[4, "sample", 4]] and timing["samples"] == 4
