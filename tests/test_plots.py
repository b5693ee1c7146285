import os

import numpy as np
import pytest

from conftest import blob_task
from keras_egt import cascade, evaluation, plots
from keras_egt.cnn import EarlyExitCNN

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def setup():
    model = EarlyExitCNN(3, (32, 32, 2), widths=(4, 8, 8, 8, 8))
    x, y = blob_task(n=12, size=32)
    report = evaluation.evaluate(model, x, y, threshold=0.4, timing=False)
    return model, x, y, report


def _check_png(path):
    import matplotlib.image

    data = open(path, "rb").read()
    assert data[:8] == PNG_SIGNATURE and len(data) > 100
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and min(image.shape[:2]) > 50
    assert not [f for f in os.listdir(os.path.dirname(path)) if f.startswith(".tmp-")]
    return image


def test_attention_grid(setup, tmp_path):
    model, x, y, _ = setup
    two = _check_png(plots.attention_grid(model, x[:2], str(tmp_path / "a2.png")))
    four = _check_png(plots.attention_grid(model, x[:4], str(tmp_path / "a4.png"), y=y[:4],
                                           class_names=["a", "b", "c"], channel=1))
    assert four.shape[0] > two.shape[0]  # one row per sample


def test_consistency_bars(setup, tmp_path):
    _, _, _, report = setup
    path = plots.consistency_bars({"Baseline": report, "EGT": report.to_dict()},
                                  str(tmp_path / "bars.png"))
    _check_png(path)


def test_exit_histogram_from_report_and_exits(setup, tmp_path):
    _, _, _, report = setup
    _check_png(plots.exit_histogram(report, str(tmp_path / "h1.png")))
    _check_png(plots.exit_histogram(np.array([0, 1, 1, 4]), str(tmp_path / "h2.png")))
    with pytest.raises(ValueError, match="0-based"):
        plots.exit_histogram(np.array([1, 5]), str(tmp_path / "h3.png"))


def test_speedup_curve(setup, tmp_path):
    model, x, y, report = setup
    _check_png(plots.speedup_curve(report, str(tmp_path / "c1.png")))
    _check_png(plots.speedup_curve(report.curve, str(tmp_path / "c2.png")))
    thresholds = cascade.calibrate_thresholds(model, x, y, max_accuracy_drop=0.1)
    _check_png(plots.speedup_curve(thresholds, str(tmp_path / "c3.png")))


def test_non_png_path_is_refused(setup, tmp_path):
    _, _, _, report = setup
    with pytest.raises(ValueError, match=".png"):
        plots.exit_histogram(report, str(tmp_path / "h.jpg"))
    assert not os.listdir(tmp_path)
