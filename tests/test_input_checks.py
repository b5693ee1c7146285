"""Input holes of issue 16: each bad argument gets a clear error, not a silent fix.

Backend-agnostic; the checks themselves live in keras_egt/checks.py.
"""

import math
import os
import subprocess
import sys

import numpy as np
import pytest

import keras_egt as egt
from keras_egt import checks

TINY = (4, 4, 8, 8, 8)


def _model(**kwargs):
    args = dict(num_classes=3, input_shape=(32, 32, 2), widths=TINY)
    args.update(kwargs)
    return egt.EarlyExitCNN(**args)


@pytest.mark.parametrize("weights, message", [
    ((1, 1, math.nan, 1, 1), "finite numbers >= 0, got nan"),
    ((1, 1, math.inf, 1, 1), "finite numbers >= 0, got inf"),
    ((1, -1, 1, 1, 1), "finite numbers >= 0, got -1"),
    ((0, 0, 0, 0, 0), "all zero"),
    ((1, 1, 1), "5 numbers"),
    ((1, 1, "x", 1, 1), "finite numbers"),
])
def test_bad_exit_weights_are_refused(weights, message):
    with pytest.raises(ValueError, match=message):
        _model(exit_weights=weights)


@pytest.mark.parametrize("kwargs, message", [
    (dict(widths=(4.7, 4, 8, 8, 8)), "widths must be a whole number, got 4.7"),
    (dict(widths=(4, 0, 8, 8, 8)), "widths must be >= 1"),
    (dict(num_classes=2.5), "num_classes must be a whole number, got 2.5"),
    (dict(num_classes=True), "num_classes must be a whole number"),
    (dict(num_classes=1), "num_classes must be >= 2"),
    (dict(batchnorm_momentum=5), r"batchnorm_momentum must lie in \[0, 1\)"),
    (dict(batchnorm_momentum=math.nan), "batchnorm_momentum must be a finite number"),
    (dict(attention_hidden_channels=0), "attention_hidden_channels must be >= 1"),
    (dict(attention_hidden_channels=2.5), "attention_hidden_channels must be a whole number"),
])
def test_bad_model_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _model(**kwargs)


def test_integral_floats_and_numpy_ints_are_accepted():
    model = _model(num_classes=np.int64(3), widths=(4.0, 4, 8, 8, 8),
                   attention_hidden_channels=np.int32(2))
    assert model.num_classes == 3 and model.widths == TINY


def test_check_helpers_hand_cases():
    assert checks.check_int(np.int16(7), "n", minimum=1) == 7
    assert checks.check_number(0.0, "m", 0, 1, include_maximum=False) == 0.0
    with pytest.raises(ValueError, match=r"m must lie in \[0, 1\), got 1"):
        checks.check_number(1, "m", 0, 1, include_maximum=False)
    assert checks.check_fraction(1, "f") == 1.0
    for bad in (1.5, -0.1, math.inf, math.nan, "0.1", None):
        with pytest.raises(ValueError, match="f must be a fraction in"):
            checks.check_fraction(bad, "f")
    assert checks.check_weights(np.array([1, 2]), 2, "w") == (1.0, 2.0)


@pytest.mark.parametrize("drop", [1.5, math.inf, -0.01, math.nan])
def test_calibration_refuses_a_drop_outside_0_1(blobs, drop):
    x, y = blobs
    model = _model()
    with pytest.raises(ValueError, match="max_accuracy_drop must be a fraction in"):
        egt.calibrate_thresholds(model, x[:16], y[:16], max_accuracy_drop=drop)


def test_string_labels_get_a_clear_error(blobs):
    x, _ = blobs
    with pytest.raises(ValueError, match="integer class indices.*dtype <U"):
        checks.check_labels(np.array(["a", "b"] * 8), 3, "y", 16)


def test_cli_help_and_argument_errors_import_no_keras():
    # --help and argument errors must answer at once: no Keras, TensorFlow or numpy.
    code = (
        "import sys\n"
        "from keras_egt.cli import main\n"
        "for argv in (['--help'], ['export'], ['train', '--epochs', 'x'], ['run-tflite', '-h']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = sorted(m for m in ('keras', 'tensorflow', 'jax', 'torch', 'numpy') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr
    assert "required: MODEL.keras" in out.stderr and "invalid int value" in out.stderr
