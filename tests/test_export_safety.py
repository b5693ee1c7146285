"""Issue 24: nothing exported from garbage.

A model with NaN or Inf weights, or finite weights whose exits' outputs are not
finite, is refused in one line before anything is converted, here and through the
TensorFlow worker of another backend. (The flatbuffer verifier in front of TFLM is
tested in tests/test_deploy_integrity.py, which has an exported folder.)
"""

import os

import keras
import numpy as np
import pytest

import keras_egt as egt
from keras_egt.checks import NonFiniteError
from keras_egt.export import convert, exporter
from kit import blob_task

TINY = (2, 2, 4, 4, 4)


def _tiny_model():
    model = egt.EarlyExitCNN(3, (32, 32, 2), widths=TINY)
    model(np.zeros((1, 32, 32, 2), "float32"))
    return model


@pytest.fixture
def no_conversion(monkeypatch):
    """Makes any conversion (here or in a TensorFlow subprocess) fail the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("the export converted (or started converting) a non-finite model")

    monkeypatch.setattr(convert, "convert_segment", refuse)
    monkeypatch.setattr(exporter, "run_in_tensorflow", refuse)


def _set(variable, transform):
    variable.assign(transform(keras.ops.convert_to_numpy(variable)))


def _one_line(error):
    message = str(error.value)
    assert "\n" not in message and "Received:" in message, message
    return message


def test_a_model_with_nan_weights_is_refused_before_converting(no_conversion, tmp_path):
    model = _tiny_model()
    kernel = model.stages[0].trainable_weights[0]
    _set(kernel, lambda w: np.full_like(w, np.nan))
    x, _ = blob_task(n=4)
    with pytest.raises(NonFiniteError, match="weights hold NaN or Inf in 1 of .* lower "
                                             "learning rate") as error:
        egt.export.export_cascade(model, tmp_path / "deploy", x)
    assert kernel.path in _one_line(error)
    assert os.listdir(tmp_path) == []  # no staging folder, no lock file


def test_finite_weights_with_non_finite_outputs_are_refused(no_conversion, tmp_path):
    # Every weight finite, but so large that the exits' logits overflow to Inf.
    model = _tiny_model()
    for variable in model.trainable_weights:
        if len(variable.shape) == 4:  # the convolution kernels
            _set(variable, lambda w: np.full_like(w, 1e30))
    assert all(np.all(np.isfinite(keras.ops.convert_to_numpy(w))) for w in model.weights)
    x, _ = blob_task(n=4)
    with pytest.raises(NonFiniteError, match="exits' probabilities on representative_data hold "
                                             ".* lower learning rate") as error:
        egt.export.export_cascade(model, tmp_path / "deploy", x)
    _one_line(error)
    assert os.listdir(tmp_path) == []


def test_a_finite_model_passes_the_check():
    x, _ = blob_task(n=4)
    exporter.check_finite_model(_tiny_model(), x)  # no error


@pytest.mark.tensorflow_only
def test_the_tensorflow_worker_reports_a_non_finite_model_with_its_type(tmp_path):
    # What another backend's export (or quantization_aware_export) hands the worker.
    model = _tiny_model()
    _set(model.stages[0].trainable_weights[0], lambda w: np.full_like(w, np.inf))
    x, _ = blob_task(n=4)
    with pytest.raises(NonFiniteError, match="weights hold NaN or Inf .* lower learning rate"):
        exporter.run_in_tensorflow("export_cascade", model, {"representative_data": x},
                                   {"out_dir": str(tmp_path / "deploy")})
    assert not (tmp_path / "deploy").exists()
