import json
import os

import numpy as np
import pytest

import references as ref
from keras_egt import costs, evaluation, metrics
from kit import SMALL, blob_task, tiny_cnn, to_numpy


@pytest.fixture(scope="module")
def setup():
    model = tiny_cnn(widths=SMALL, consistency_weight=0.3)
    x, y = blob_task(n=30, size=32)
    return model, x, y


def _softmax(logits):
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_report_figures_match_independent_computations(setup):
    model, x, y = setup
    num_exits = model.num_exits
    # References from the model's raw outputs and maps, in numpy.
    probabilities = np.stack([_softmax(l.astype(np.float64)) for l in to_numpy(model(x))])
    maps = [to_numpy(m) for m in model.attention_maps(x)]
    threshold = float(np.median(probabilities[0].max(-1)))  # some samples leave early
    report = evaluation.evaluate(model, x, y, threshold=threshold, timing=False)
    assert report.name == "EGT (λ = 0.3)"
    predictions = probabilities.argmax(-1)
    np.testing.assert_allclose(report.exit_accuracy, (predictions == y).mean(1))
    assert report.final_accuracy == pytest.approx(np.mean(predictions[-1] == y))
    exits = ref.first_confident_exit(probabilities, [threshold] * (num_exits - 1))
    assert 0 < np.mean(exits == 0) < 1
    labels = predictions[exits, np.arange(len(y))]
    assert report.accuracy == pytest.approx(np.mean(labels == y))
    np.testing.assert_allclose(report.exit_shares,
                               np.bincount(exits, minlength=num_exits) / len(y))
    exit_macs = np.array(costs.exit_macs(model), float)
    assert report.average_macs == pytest.approx(exit_macs[exits].mean())
    final_only = sum(costs.stage_macs(model)) + costs.head_macs(model)[-1]
    assert report.mac_speedup == pytest.approx(final_only / exit_macs[exits].mean())
    first = ref.oracle_exits(predictions == y)
    assert report.oracle["average_macs"] == pytest.approx(exit_macs[first].mean())
    assert report.oracle["accuracy"] == pytest.approx((predictions == y).any(0).mean())
    assert report.mac_ratio_to_oracle == pytest.approx(exit_macs[exits].mean() / exit_macs[first].mean())
    consistency = [ref.consistency(m, maps[-1]).mean() for m in maps[:-1]]
    np.testing.assert_allclose(report.consistency, consistency, atol=1e-5)
    assert report.consistency_avg == pytest.approx(np.mean(consistency), abs=1e-5)
    # Chance floor: early map of sample i against the final map of another sample.
    perm = metrics.derangement(len(x), seed=0)
    assert np.all(perm != np.arange(len(x))) and sorted(perm) == list(range(len(x)))
    chance = [ref.consistency(m, maps[-1][perm]).mean() for m in maps[:-1]]
    np.testing.assert_allclose(report.chance_consistency, chance, atol=1e-5)
    assert report.chance_consistency_avg == pytest.approx(np.mean(chance), abs=1e-5)
    c, f = np.array(report.consistency), np.array(report.chance_consistency)
    np.testing.assert_allclose(report.corrected_consistency, (c - f) / (1 - f), atol=1e-9)
    assert report.corrected_consistency_avg == pytest.approx(np.mean((c - f) / (1 - f)))
    assert report.timing is None


def test_per_exit_lambda_report(setup):
    _, x, y = setup
    model = tiny_cnn(widths=SMALL, consistency_weight=[0.1, 0.2, 0.3, 0.4])
    report = evaluation.evaluate(model, x, y, timing=False)
    assert report.name == "EGT (λ = 0.1, 0.2, 0.3, 0.4)"
    assert report.consistency_weight == [0.1, 0.2, 0.3, 0.4]
    row = next(line for line in report.to_markdown().splitlines() if line.startswith("| Chance-corrected"))
    assert f"{report.corrected_consistency[0]:.3f}" in row


@pytest.mark.parametrize("threshold, leaves_at", [(0.0, 0), (1.5, -1)])
def test_timing_follows_the_exit_rule(setup, threshold, leaves_at):
    model, x, _ = setup
    timing = evaluation.time_per_sample(model, x, threshold, samples=3, warmup=1)
    expected = np.zeros(model.num_exits)
    expected[leaves_at] = 1.0
    np.testing.assert_array_equal(timing["timed_exit_shares"], expected)
    assert timing["samples"] == 3


def test_markdown_has_the_paper_layout(setup):
    model, x, y = setup
    report = evaluation.evaluate(model, x, y, threshold=0.5, timing=True, timing_samples=4)
    text = report.to_markdown()
    assert "| Model | Exit 1 | Exit 2 | Exit 3 | Exit 4 | Avg | Overall Acc. (%) |" in text
    assert "| Model | Avg Time/Sample (ms) | Accuracy (%) |" in text
    row = next(line for line in text.splitlines() if line.startswith("| EGT (λ = 0.3) |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:7] == [f"{c:.3f}" for c in report.consistency] + [
        f"{report.consistency_avg:.3f}", f"{100 * report.accuracy:.2f}"]
    with_ee = next(line for line in text.splitlines() if line.startswith("| With Early Exit"))
    assert f"{report.timing['ms_with_early_exit']:.2f}" in with_ee
    assert report.timing["samples"] == 4
    assert report.timing["ms_with_early_exit"] > 0 and report.timing["ms_without_early_exit"] > 0
    assert report.timing["speedup"] == pytest.approx(
        report.timing["ms_without_early_exit"] / report.timing["ms_with_early_exit"])
    assert sum(report.timing["timed_exit_shares"]) == pytest.approx(1.0)


def test_json_round_trip_is_atomic_and_complete(setup, tmp_path):
    model, x, y = setup
    report = evaluation.evaluate(model, x, y, timing=False, name="Mine")
    path = tmp_path / "sub" / "report.json"
    assert report.to_json(path) == path
    assert os.listdir(tmp_path / "sub") == ["report.json"]  # no temporary left behind
    data = json.loads(path.read_text())
    assert data == json.loads(json.dumps(report.to_dict()))
    for key in ("exit_accuracy", "consistency", "chance_consistency", "accuracy", "exit_shares",
                "average_macs", "mac_speedup", "oracle", "curve", "thresholds"):
        assert key in data
    assert evaluation.Report.from_json(path) == report


def test_compare_markdown_lists_every_model(setup):
    model, x, y = setup
    r0 = evaluation.evaluate(model, x, y, timing=False)
    r1 = evaluation.evaluate(model, x, y, threshold=0.0, timing=False)
    text = evaluation.compare_markdown({"Baseline": r0, "EGT (λ = 0.3)": r1})
    assert "| Baseline |" in text and "| EGT (λ = 0.3) |" in text
    assert "| Baseline: With Early Exit |" in text
    assert text.count("| Model | Exit 1 | Exit 2 | Exit 3 | Exit 4 | Avg | Overall Acc. (%)") == 1
    with pytest.raises(ValueError, match="at least one report"):
        evaluation.compare_markdown({})


def test_bad_input_is_reported(setup):
    model, x, y = setup
    with pytest.raises(ValueError, match="at least 2"):
        evaluation.evaluate(model, x[:1], y[:1], timing=False)
    with pytest.raises(ValueError, match="labels"):
        evaluation.evaluate(model, x, y[:-1], timing=False)
    with pytest.raises(ValueError, match="criterion"):
        evaluation.evaluate(model, x, y, criterion="margin", timing=False)
