import os

import numpy as np
import pytest

from keras_egt import calibration, cascade, evaluation, plots
from kit import SMALL, blob_task, tiny_cnn, to_numpy

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def setup():
    model = tiny_cnn(widths=SMALL)
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


def _bar_heights(ax):
    return [[bar.get_height() for bar in container] for container in ax.containers]


def test_attention_grid(setup, tmp_path, drawn):
    model, x, y, _ = setup
    two = _check_png(plots.attention_grid(model, x[:2], str(tmp_path / "a2.png")))
    four = _check_png(plots.attention_grid(model, x[:4], str(tmp_path / "a4.png"), y=y[:4],
                                           class_names=["a", "b", "c"], channel=1))
    assert four.shape[0] > two.shape[0]  # one row per sample
    maps = [to_numpy(m)[..., 0] for m in model.attention_maps(x[:4])]
    axes = np.array(drawn[1].axes).reshape(4, model.num_exits + 1)
    for i in range(4):
        # The input column shows the chosen channel; exit k's column overlays its map
        # (scaled to a maximum of 1) on that input.
        np.testing.assert_allclose(axes[i, 0].images[0].get_array(), x[i, :, :, 1])
        assert axes[i, 0].get_ylabel() == f"#{i} true: {'abc'[y[i]]}"
        for k in range(model.num_exits):
            shown = np.asarray(axes[i, k + 1].images[1].get_array())
            np.testing.assert_allclose(shown, maps[k][i] / maps[k][i].max(), atol=1e-5)
    assert len(drawn[0].axes) == 2 * (model.num_exits + 1)


def test_consistency_bars(setup, tmp_path, drawn):
    _, _, _, report = setup
    other = dict(report.to_dict(), consistency=[0.1, 0.2, 0.3, 0.4], consistency_avg=0.25)
    path = plots.consistency_bars({"Baseline": report, "EGT": other}, str(tmp_path / "bars.png"))
    _check_png(path)
    (ax,) = drawn[0].axes
    heights = _bar_heights(ax)
    np.testing.assert_allclose(heights[0], list(report.consistency) + [report.consistency_avg])
    np.testing.assert_allclose(heights[1], [0.1, 0.2, 0.3, 0.4, 0.25])
    floors = [segment[0][1] for segment in ax.collections[0].get_segments()]
    np.testing.assert_allclose(
        floors, list(report.chance_consistency) + [report.chance_consistency_avg])
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert [t for t in labels if t != "chance floor"] == ["Baseline", "EGT"]


def test_exit_histogram_from_report_and_exits(setup, tmp_path, drawn):
    model, x, _, report = setup
    _check_png(plots.exit_histogram(report, str(tmp_path / "h1.png")))
    _check_png(plots.exit_histogram(np.array([0, 1, 1, 4]), str(tmp_path / "h2.png")))
    # The cascade's bars are its exit counts (in %); the oracle's beside them.
    _, exits = cascade.Cascade(model, 0.4).predict(x)
    counts = np.bincount(exits, minlength=model.num_exits)
    cascade_bars, oracle_bars = _bar_heights(drawn[0].axes[0])
    np.testing.assert_allclose(cascade_bars, 100 * counts / len(x))
    np.testing.assert_allclose(oracle_bars, 100 * np.asarray(report.oracle["exit_shares"]))
    np.testing.assert_allclose(_bar_heights(drawn[1].axes[0]), [[25, 50, 0, 0, 25]])
    with pytest.raises(ValueError, match="0-based"):
        plots.exit_histogram(np.array([1, 5]), str(tmp_path / "h3.png"), num_exits=5)
    with pytest.raises(ValueError, match="0-based"):
        plots.exit_histogram(np.array([1, -1]), str(tmp_path / "h4.png"))


def _curve_points(report_curve):
    points = sorted(report_curve, key=lambda p: p["threshold"])
    return [p["speedup"] for p in points], [100 * p["accuracy"] for p in points]


def test_speedup_curve(setup, tmp_path, drawn):
    model, x, y, report = setup
    _check_png(plots.speedup_curve(report, str(tmp_path / "c1.png")))
    _check_png(plots.speedup_curve(report.curve, str(tmp_path / "c2.png")))
    thresholds = calibration.calibrate_thresholds(model, x, y, max_accuracy_drop=0.1)
    _check_png(plots.speedup_curve(thresholds, str(tmp_path / "c3.png")))
    speed, accuracy = _curve_points(report.curve)
    for figure, marked in zip(drawn, [(report.mac_speedup, report.accuracy), None,
                                      (thresholds.speedup, thresholds.accuracy)]):
        curve = _curve_points(report.curve if marked is None or figure is not drawn[2]
                              else thresholds.curve)
        line = figure.axes[0].lines[0]
        np.testing.assert_allclose(line.get_xdata(), curve[0])
        np.testing.assert_allclose(line.get_ydata(), curve[1])
        stars = [l for l in figure.axes[0].lines if l.get_marker() == "*"]
        if marked is None:
            assert not stars
        else:
            np.testing.assert_allclose(stars[0].get_xydata(), [[marked[0], 100 * marked[1]]])
    assert len(speed) == len(accuracy) > 1


def test_non_png_path_is_refused(setup, tmp_path):
    _, _, _, report = setup
    with pytest.raises(ValueError, match=".png"):
        plots.exit_histogram(report, str(tmp_path / "h.jpg"))
    assert not os.listdir(tmp_path)
