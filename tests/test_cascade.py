import math

import numpy as np
import pytest

from keras_egt import cascade, costs, metrics
from keras_egt.cnn import EarlyExitCNN
from kit import blob_task

WIDTHS = (4, 8, 8, 8, 8)


@pytest.fixture(scope="module")
def setup():
    model = EarlyExitCNN(3, (32, 32, 2), widths=WIDTHS)
    x, y = blob_task(n=40, size=32)
    probabilities = metrics.exit_probabilities(model, x)
    return model, x, y, probabilities, _halving(probabilities.max(-1))


def _halving(conf):
    """Thresholds letting about half the samples still in flight out at each early exit."""
    alive = np.ones(conf.shape[1], bool)
    thresholds = []
    for k in range(4):
        # Midway between two samples' confidences: float noise cannot flip a decision.
        values = np.sort(conf[k][alive])
        middle = len(values) // 2
        thresholds.append(float(values[middle - 1] + values[middle]) / 2)
        alive &= conf[k] < thresholds[-1]
    return thresholds


def _reaching(probabilities, thresholds):
    """Independent reference: how many samples reach each block."""
    alive = np.ones(probabilities.shape[1], bool)
    counts = []
    for k in range(5):
        counts.append(int(alive.sum()))
        if k < 4:
            alive &= probabilities[k].max(-1) < thresholds[k]
    return counts


# --- the exit rule ---------------------------------------------------------------


def test_should_exit_max_probability():
    p = np.array([[0.95, 0.05], [0.6, 0.4], [0.9, 0.1]])
    np.testing.assert_array_equal(cascade.should_exit(p, 0.9), [True, False, True])
    assert cascade.should_exit(p[1], 0.5).dtype == bool
    assert bool(cascade.should_exit(p[1], 0.5)) is True


def test_should_exit_entropy_is_one_minus_normalised_entropy():
    p = np.array([[0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0]])
    h = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    expected = [1 - h / math.log(3), 0.0, 1.0]
    np.testing.assert_allclose(cascade.confidence(p, "entropy"), expected, atol=1e-12)
    t = expected[0]
    np.testing.assert_array_equal(
        cascade.should_exit(p, t - 1e-9, "entropy"), [True, False, True]
    )
    np.testing.assert_array_equal(
        cascade.should_exit(p, t + 1e-9, "entropy"), [False, False, True]
    )


@pytest.mark.parametrize("criterion", cascade.CRITERIA)
def test_threshold_zero_always_exits_and_above_one_never(criterion):
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(4), size=50)
    p[0] = [0.25] * 4
    p[1] = [1.0, 0, 0, 0]
    assert cascade.should_exit(p, 0.0, criterion).all()
    assert not cascade.should_exit(p, 1.0001, criterion).any()
    assert not cascade.should_exit(p, cascade.NEVER_EXIT, criterion).any()


def test_exit_rule_rejects_bad_arguments(setup):
    with pytest.raises(ValueError, match="criterion"):
        cascade.should_exit(np.array([[0.5, 0.5]]), 0.5, "margin")
    with pytest.raises(ValueError, match="NaN"):
        cascade.should_exit(np.array([[0.5, 0.5]]), float("nan"))
    with pytest.raises(ValueError, match="one per exit"):
        cascade.Cascade(setup[0], [0.9, 0.9])


# --- the cascade ----------------------------------------------------------------


@pytest.mark.parametrize("criterion", cascade.CRITERIA)
def test_batch_equals_batch_one(setup, criterion):
    model, x, _, probabilities, _ = setup
    thresholds = _halving(cascade.confidence(probabilities, criterion))
    c = cascade.Cascade(model, thresholds, criterion=criterion)
    labels_1, exits_1 = c.predict(x, batch_size=1)
    labels_n, exits_n = c.predict(x, batch_size=16)
    np.testing.assert_array_equal(labels_1, labels_n)
    np.testing.assert_array_equal(exits_1, exits_n)
    assert len(set(exits_n.tolist())) == 5  # the samples really spread over the exits
    labels_d, exits_d = c.decide(probabilities)
    np.testing.assert_array_equal(labels_d, labels_n)
    np.testing.assert_array_equal(exits_d, exits_n)


def test_threshold_zero_leaves_at_exit_one(setup):
    model, x, _, probabilities, _ = setup
    labels, exits = cascade.Cascade(model, 0.0).predict(x, batch_size=16)
    assert np.all(exits == 0)
    np.testing.assert_array_equal(labels, probabilities[0].argmax(-1))


def test_threshold_above_one_reproduces_exit_five(setup):
    model, x, y, probabilities, _ = setup
    labels, exits = cascade.Cascade(model, 1.01).predict(x, batch_size=16)
    assert np.all(exits == 4)
    np.testing.assert_array_equal(labels, probabilities[4].argmax(-1))
    assert np.mean(labels == y) == pytest.approx(metrics.exit_accuracies(probabilities, y)[4])


@pytest.mark.parametrize("batch_size", [40, 7])
def test_deeper_blocks_see_only_samples_in_flight(setup, monkeypatch, batch_size):
    model, x, _, probabilities, halving = setup
    seen = [[] for _ in range(5)]
    for k, block in enumerate(model.blocks):
        original = block.call

        def counting(inputs, training=None, _k=k, _call=original):
            seen[_k].append(int(inputs.shape[0]))
            return _call(inputs, training=training)

        monkeypatch.setattr(block, "call", counting)
    labels, exits = cascade.Cascade(model, halving).predict(x, batch_size=batch_size)
    rows = [sum(s) for s in seen]
    assert rows == _reaching(probabilities, halving)
    assert rows[0] == len(x) and rows[1] < rows[0] and rows[4] > 0
    # Rows reaching block k are exactly those that did not leave before it.
    assert rows == [int(np.sum(exits >= k)) for k in range(5)]


def test_per_exit_thresholds(setup):
    model, x, _, probabilities, _ = setup
    # Exit 1 never fires, exit 2 always does.
    labels, exits = cascade.Cascade(model, [2.0, 0.0, 0.5, 0.5]).predict(x)
    assert np.all(exits == 1)
    np.testing.assert_array_equal(labels, probabilities[1].argmax(-1))
    assert cascade.Cascade(model, [0.9, 0.8, 0.7, 0.6, 0.0]).thresholds[:4] == (0.9, 0.8, 0.7, 0.6)


# --- the cost model -------------------------------------------------------------


def test_paper_architecture_macs_by_hand():
    model = EarlyExitCNN(9, (64, 64, 2), widths="paper")
    # 3x3 "same" conv at the block's input resolution: H*W*9*C_in*C_out.
    blocks = [
        64 * 64 * 9 * 2 * 64,  # 4,718,592
        32 * 32 * 9 * 64 * 128,  # 75,497,472
        16 * 16 * 9 * 128 * 256,  # 75,497,472
        8 * 8 * 9 * 256 * 512,  # 75,497,472
        4 * 4 * 9 * 512 * 512,  # 37,748,736
    ]
    # Head on H x W x C features, hidden = max(8, C // 8), pooled to a 4x4 grid:
    # 1x1 conv H*W*C*h + 3x3 score conv H*W*9*h + gating H*W*C + average-pooling
    # adds H*W*C + dense 16*C*9.
    features = [(32, 32, 64), (16, 16, 128), (8, 8, 256), (4, 4, 512), (4, 4, 512)]
    heads = []
    for h, w, c in features:
        hidden = max(8, c // 8)
        heads.append(h * w * c * hidden + h * w * 9 * hidden + 2 * h * w * c + 16 * c * 9)
    assert heads[0] == 32 * 32 * 64 * 8 + 32 * 32 * 9 * 8 + 2 * 32 * 32 * 64 + 16 * 64 * 9
    assert costs.stage_macs(model) == blocks
    assert costs.head_macs(model) == heads
    expected_exit = [sum(blocks[: k + 1]) + sum(heads[: k + 1]) for k in range(5)]
    assert costs.exit_macs(model) == expected_exit
    final = sum(blocks) + heads[4]
    assert costs.final_only_macs(model) == final
    exits = np.array([0, 0, 1, 4, 2, 0])
    c = cascade.Cascade(model, 0.9)
    average = sum(expected_exit[e] for e in exits) / len(exits)
    assert c.average_macs(exits) == pytest.approx(average)
    assert c.speedup(exits) == pytest.approx(final / average)


def test_oracle_takes_earliest_correct_exit():
    correct = np.array(
        [[0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0], [1, 0, 0, 1]], bool
    )
    # Sample 3 is never right: it runs to exit 5 (index 4).
    np.testing.assert_array_equal(cascade.oracle_exits(correct), [1, 0, 4, 2])
