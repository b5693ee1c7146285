"""Issue 24, "garbage certified": NaN/Inf refused up front, at training and in every output check."""

import math
import os
import warnings

import keras
import numpy as np
import pytest

from keras_egt import callbacks, cascade, evaluation, recipe
from keras_egt.calibration import CalibratedThresholds, calibrate_thresholds
from keras_egt.cascade import NEVER_EXIT
from keras_egt.checks import NonFiniteError, check_finite_outputs
from kit import blob_task, tiny_cnn


def _poison(model):
    # A diverged model: one NaN weight in the final head makes every output NaN.
    head = model.heads[-1]
    kernel = head.trainable_variables[-2]
    kernel.assign(np.full(kernel.shape, np.nan, "float32"))
    return model


def test_check_finite_outputs_refuses_nan_and_inf_and_passes_finite():
    assert check_finite_outputs(np.ones((2, 3)), "p").shape == (2, 3)
    for bad in (np.nan, np.inf, -np.inf):
        values = np.ones((2, 3))
        values[1, 2] = bad
        with pytest.raises(NonFiniteError, match="1 non-finite"):
            check_finite_outputs(values, "p")
    # The CLI maps ValueError to one line and exit 2; FloatingPointError is the kind.
    assert issubclass(NonFiniteError, ValueError)
    assert issubclass(NonFiniteError, FloatingPointError)


def test_calibration_refuses_all_nan_probabilities():
    # Used to certify threshold 0.0: every NaN comparison says "exit now".
    probabilities = np.full((3, 40, 4), np.nan)
    y = np.arange(40) % 4
    with pytest.raises(NonFiniteError, match="probabilities"):
        calibrate_thresholds(None, None, y, 0.05, probabilities=probabilities)
    with pytest.raises(NonFiniteError):
        calibrate_thresholds(None, None, None, max_disagreement=0.05,
                             probabilities=probabilities)


@pytest.mark.parametrize("budget", [math.nan, math.inf])
def test_mac_budget_nan_gives_the_right_reason(budget):
    model = tiny_cnn()
    x, y = blob_task(n=8)
    with pytest.raises(ValueError, match="mac_budget must be a finite number"):
        calibrate_thresholds(model, x, None, mac_budget=budget)


def test_nan_model_refused_by_cascade_evaluate_and_calibration():
    model = _poison(tiny_cnn())
    x, y = blob_task(n=8)
    with pytest.raises(NonFiniteError, match="exit 5's probabilities"):
        cascade.Cascade(model, 0.9).predict(x, batch_size=4)
    with pytest.raises(NonFiniteError):
        evaluation.evaluate(model, x, y, timing=False)
    with pytest.raises(NonFiniteError):
        calibrate_thresholds(model, x, y, 0.05)


def test_final_exit_at_chance_is_not_certified():
    # Hand-made: every exit always says class 0 with certainty, labels uniform over 4
    # classes: the final exit is right 25% of the time, i.e. at chance.
    n, classes = 400, 4
    probabilities = np.zeros((3, n, classes))
    probabilities[:, :, 0] = 1.0
    y = np.arange(n) % classes
    with pytest.warns(UserWarning, match="final exit is at chance"):
        cal = calibrate_thresholds(None, None, y, 0.01, confidence=0.9,
                                   probabilities=probabilities)
    # Not certified, never exits early, nothing tested, and the record says why.
    assert cal.certified is False and list(cal) == [NEVER_EXIT] * 3
    assert cal.path == [] and cal.samples_needed is None
    assert f"{n // classes}/{n} correct" in cal.reason
    assert cal.reason in cal.describe() and cal.describe().startswith("NOT certified")
    assert CalibratedThresholds.from_dict(cal.to_dict()).reason == cal.reason
    # The same outputs with labels the final exit gets right are calibrated as before.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cal = calibrate_thresholds(None, None, np.zeros(n, int), 0.01, confidence=0.9,
                                   probabilities=probabilities)
    assert cal.certified


def test_chance_test_is_the_one_sided_binomial_at_the_calibration_level():
    from scipy import stats

    from keras_egt.calibration import chance_reason

    n, classes, delta = 100, 4, 0.1
    # The smallest count that scipy's binomial test calls significant at delta passes;
    # one fewer is refused.
    k = next(k for k in range(n + 1)
             if stats.binomtest(k, n, 1 / classes, alternative="greater").pvalue <= delta)
    y = np.zeros(n, int)
    labels = np.where(np.arange(n) < k, 0, 1)
    assert chance_reason(labels, y, classes, delta) is None
    labels = np.where(np.arange(n) < k - 1, 0, 1)
    assert f"{k - 1}/{n} correct" in chance_reason(labels, y, classes, delta)


@pytest.mark.parametrize("rate", [math.inf, math.nan, -1e-3, 0.0])
def test_recipe_refuses_non_finite_learning_rate_before_training(rate):
    model = tiny_cnn()
    x, y = blob_task(n=8)
    before = keras.ops.convert_to_numpy(model.trainable_variables[0]).copy()
    with pytest.raises(ValueError, match="learning_rate"):
        recipe.fit(model, x, y, epochs=1, verbose=0, learning_rate=rate)
    # Refused before any step: the weights are untouched.
    np.testing.assert_array_equal(before, keras.ops.convert_to_numpy(model.trainable_variables[0]))


@pytest.mark.parametrize("kwargs,match", [
    ({"every": math.nan}, "every"), ({"factor": math.nan}, "factor"),
    ({"factor": math.inf}, "factor"), ({"factor": 0}, "factor"),
])
def test_step_decay_refuses_non_finite(kwargs, match):
    with pytest.raises(ValueError, match=match):
        callbacks.StepDecay(**kwargs)


def test_training_stops_on_nan_loss_naming_the_epoch(tmp_path):
    model = _poison(tiny_cnn())
    x, y = blob_task(n=16)
    with pytest.raises(NonFiniteError, match="epoch 1, batch 1"):
        recipe.fit(model, x, y, epochs=2, batch_size=8, verbose=0)
    # A plain fit user gets the same stop from the callback.
    model = _poison(tiny_cnn())
    model.compile(optimizer="adam")
    with pytest.raises(NonFiniteError, match="epoch 1"):
        model.fit(x, y, epochs=1, batch_size=8, verbose=0,
                  callbacks=[callbacks.StopOnNonFinite()])
    assert not os.listdir(tmp_path)


def _bn_backbone():
    inputs = keras.Input((16, 16, 2))
    x = keras.layers.Conv2D(4, 3, padding="same", name="c1")(inputs)
    x = keras.layers.BatchNormalization(name="bn_one")(x)
    x = keras.layers.ReLU(name="r1")(x)
    x = keras.layers.Conv2D(4, 3, padding="same", name="c2")(x)
    x = keras.layers.BatchNormalization(name="bn_two")(x)
    x = keras.layers.ReLU(name="r2")(x)
    return keras.Model(inputs, x)


def test_default_batchnorm_momentum_warns_once_naming_the_layers():
    from keras_egt.model import EarlyExitModel

    with pytest.warns(UserWarning, match="bn_one, bn_two") as record:
        EarlyExitModel(_bn_backbone(), ["r1", "r2"], num_classes=3)
    assert sum("BatchNormalization" in str(w.message) for w in record) == 1


def test_batchnorm_momentum_sets_the_backbone_and_is_serialised():
    from keras_egt.model import EarlyExitModel

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = EarlyExitModel(_bn_backbone(), ["r1", "r2"], num_classes=3,
                               batchnorm_momentum=0.9)
    norms = [model.backbone.get_layer(n) for n in ("bn_one", "bn_two")]
    assert [layer.momentum for layer in norms] == [0.9, 0.9]
    assert model.get_config()["batchnorm_momentum"] == 0.9
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = EarlyExitModel.from_config(model.get_config())
    assert again.backbone.get_layer("bn_two").momentum == 0.9
    for bad in (math.nan, 1.0, -0.1):
        with pytest.raises(ValueError, match="batchnorm_momentum"):
            EarlyExitModel(_bn_backbone(), ["r1", "r2"], num_classes=3, batchnorm_momentum=bad)
