import numpy as np
import pytest
from keras import ops

import references as ref
from keras_egt import metrics
from keras_egt.cnn import EarlyExitCNN
from kit import blob_task

WIDTHS = (4, 8, 8, 8, 8)


@pytest.fixture(scope="module")
def model_and_data():
    model = EarlyExitCNN(3, (32, 32, 2), widths=WIDTHS)
    x, y = blob_task(n=23, size=32)
    return model, x, y


def _reference_maps(model, x):
    return [ops.convert_to_numpy(m).astype(np.float64) for m in model.attention_maps(x)]


def test_consistency_matches_numpy_reference_on_model_maps(model_and_data):
    model, x, y = model_and_data
    maps = _reference_maps(model, x)
    expected = [ref.consistency(maps[k], maps[-1]) for k in range(4)]
    # The maps must be informative for the comparison to mean anything.
    assert max(np.ptp(e) for e in expected) > 1e-3
    outputs = metrics.exit_outputs(model, x, batch_size=7)  # uneven last batch
    got = metrics.attention_consistency(outputs)
    np.testing.assert_allclose(got, [e.mean() for e in expected], atol=2e-5)
    np.testing.assert_allclose(
        metrics.attention_consistency(outputs, per_sample=True), np.stack(expected), atol=2e-5
    )
    # Raw maps straight from the model give the same figures.
    np.testing.assert_allclose(metrics.attention_consistency(maps), got, atol=2e-5)


def test_chance_floor_pairs_different_samples(model_and_data):
    model, x, _ = model_and_data
    maps = _reference_maps(model, x)
    outputs = metrics.exit_outputs(model, x, batch_size=10)
    perm = metrics.derangement(len(x), seed=3)
    expected = [ref.consistency(maps[k], maps[-1][perm]).mean() for k in range(4)]
    np.testing.assert_allclose(metrics.chance_consistency(outputs, seed=3), expected, atol=2e-5)
    assert metrics.chance_consistency(outputs, seed=3) != metrics.attention_consistency(outputs)


def test_hand_made_consistency_cases():
    n, size = 2, 4
    final = np.zeros((n, size, size, 1), "float32")
    final[:, :, 0] = 1.0
    same = final.copy()
    disjoint = np.zeros_like(final)
    disjoint[:, :, 2:] = 1.0
    half = np.zeros((n, 8, 8, 1), "float32")  # 8x8 left half -> 4x4 columns [1, 7/8, 1/8, 0]
    half[:, :, :4] = 1.0
    known = 1.0 / np.sqrt(1 + 49 / 64 + 1 / 64)
    got = metrics.attention_consistency([same, disjoint, half, same, final])
    np.testing.assert_allclose(got, [1.0, 0.0, known, 1.0], atol=1e-6)


def test_exit_accuracies_match_model_logits(model_and_data):
    model, x, y = model_and_data
    logits = [ops.convert_to_numpy(v) for v in model(x, training=False)]
    expected = [float(np.mean(np.argmax(v, -1) == y)) for v in logits]
    outputs = metrics.exit_outputs(model, x, batch_size=5, maps=False)
    assert outputs.maps is None
    assert metrics.exit_accuracies(outputs, y) == pytest.approx(expected)
    probabilities = metrics.exit_probabilities(model, x, batch_size=64)
    np.testing.assert_allclose(probabilities, outputs.probabilities, atol=1e-6)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-12)


def test_softmax_matches_formula():
    z = np.array([[1.0, 2.0, 3.0], [1000.0, 1000.0, 0.0]])
    e = np.exp(z[0] - 3.0)
    np.testing.assert_allclose(metrics.softmax(z)[0], e / e.sum())
    np.testing.assert_allclose(metrics.softmax(z)[1], [0.5, 0.5, 0.0], atol=1e-12)


@pytest.mark.parametrize("n", [2, 3, 10, 101])
def test_derangement_has_no_fixed_points(n):
    perm = metrics.derangement(n, seed=n)
    assert sorted(perm.tolist()) == list(range(n))
    assert np.all(perm != np.arange(n))
    np.testing.assert_array_equal(perm, metrics.derangement(n, seed=n))


def test_bad_input_is_reported():
    with pytest.raises(ValueError, match="at least 2"):
        metrics.derangement(1)
    model = EarlyExitCNN(3, (32, 32, 2), widths=WIDTHS)
    with pytest.raises(ValueError, match="rank 4"):
        metrics.exit_outputs(model, np.zeros((32, 32, 2), "float32"))
    with pytest.raises(ValueError, match="labels"):
        metrics.exit_accuracies(np.full((5, 2, 3), 1 / 3), [0, 7])
