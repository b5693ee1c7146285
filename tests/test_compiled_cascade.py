"""The batch-1 compiled cascade: the batched cascade's answers, and no work past the exit."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_egt import cascade, metrics
from keras_egt.cnn import EarlyExitCNN
from keras_egt.compiled_cascade import CompiledCascade, graph_confidence
from kit import BACKEND, blob_task

WIDTHS = (4, 8, 8, 8, 8)


@pytest.fixture(scope="module")
def setup():
    keras.utils.set_random_seed(7)
    model = EarlyExitCNN(3, (32, 32, 2), widths=WIDTHS)
    x, y = blob_task(n=24, size=32)
    return model, x, metrics.exit_probabilities(model, x)


def _halving(conf):
    """Thresholds midway between two in-flight samples' confidences at each early exit,
    letting about half of them out (far from float32 rounding of any confidence)."""
    alive = np.ones(conf.shape[1], bool)
    thresholds = []
    for k in range(len(conf)):
        values = np.sort(conf[k][alive])
        middle = len(values) // 2
        thresholds.append(float(values[middle - 1] + values[middle]) / 2)
        alive &= conf[k] < thresholds[-1]
    return thresholds


def _reaching(conf, thresholds):
    """Independent reference: how many samples each stage runs on."""
    alive = np.ones(conf.shape[1], bool)
    counts = []
    for k in range(len(conf) + 1):
        counts.append(int(alive.sum()))
        if k < len(conf):
            alive &= conf[k] < thresholds[k]
    return counts


@pytest.mark.parametrize("criterion", ["max_probability", "entropy"])
def test_same_labels_and_exits_as_the_batched_cascade(setup, criterion):
    model, x, probabilities = setup
    thresholds = _halving(cascade.confidence(probabilities[:-1], criterion))
    batched = cascade.Cascade(model, thresholds, criterion).predict(x, batch_size=64)
    compiled = CompiledCascade(model, thresholds, criterion).predict(x)
    np.testing.assert_array_equal(compiled[0], batched[0])
    np.testing.assert_array_equal(compiled[1], batched[1])
    # The thresholds do spread the samples over the exits.
    assert len(np.unique(batched[1])) >= 3
    # Cascade.predict at batch size 1 is this path.
    one = cascade.Cascade(model, thresholds, criterion).predict(x, batch_size=1)
    np.testing.assert_array_equal(one[0], batched[0])
    np.testing.assert_array_equal(one[1], batched[1])


@pytest.mark.parametrize("threshold, exit_index", [(0.0, 0), (1.0000001, -1), (2.0, -1),
                                                   (float("inf"), -1)])
def test_threshold_zero_exits_first_above_one_runs_to_the_end(setup, threshold, exit_index):
    model, x, probabilities = setup
    labels, exits = CompiledCascade(model, threshold).predict(x)
    k = exit_index % model.num_exits
    np.testing.assert_array_equal(exits, np.full(len(x), k))
    np.testing.assert_array_equal(labels, np.argmax(probabilities[k], -1))


@pytest.mark.parametrize("criterion", ["max_probability", "entropy"])
def test_graph_confidence_is_the_exit_rule_confidence(criterion):
    logits = np.random.default_rng(0).normal(size=(50, 5)) * 4
    logits[0] = [80.0, 0, 0, 0, 0]  # p underflows to 0 for four classes
    expected = cascade.confidence(metrics.softmax(logits), criterion)
    got = ops.convert_to_numpy(graph_confidence(ops.convert_to_tensor(logits, "float32"),
                                                criterion))
    np.testing.assert_allclose(got, expected, atol=1e-6)


def _runtime_callback(fn, h):
    """Calls `fn(rows)` when the graph *executes* (not when it is traced); returns h."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        def count(v):
            fn(int(v.shape[0]))
            return np.float32(0)

        zero = tf.numpy_function(count, [h], tf.float32, stateful=True)
        zero.set_shape(())
        return h + zero
    if BACKEND == "jax":
        import jax

        def count(v):
            fn(int(v.shape[0]))
            return np.zeros((), np.float32)

        zero = jax.pure_callback(count, jax.ShapeDtypeStruct((), np.float32), h)
        return h + zero
    fn(int(h.shape[0]))
    return h


class _Counting:
    """The model's stages, each counting the rows it is run on at execution time."""

    def __init__(self, model):
        self.model = model
        self.num_exits = model.num_exits
        self.heads = model.heads
        self.compute_dtype = model.compute_dtype
        self.rows = [0] * model.num_exits
        self.stages = [self._wrap(k, stage) for k, stage in enumerate(model.stages)]

    def _wrap(self, k, stage):
        def add(rows):
            self.rows[k] += rows

        def run(h, training=False):
            return stage(_runtime_callback(add, h), training=training)

        return run


def test_a_sample_leaving_at_exit_1_runs_no_later_stage(setup):
    model, x, _ = setup
    counting = _Counting(model)
    labels, exits = CompiledCascade(counting, 0.0).predict(x)
    np.testing.assert_array_equal(exits, 0)
    assert counting.rows == [len(x)] + [0] * (model.num_exits - 1)


def test_each_stage_runs_only_on_the_samples_that_reach_it(setup):
    model, x, probabilities = setup
    conf = cascade.confidence(probabilities[:-1])
    thresholds = _halving(conf)
    counting = _Counting(model)
    CompiledCascade(counting, thresholds).predict(x)
    assert counting.rows == _reaching(conf, thresholds)
    assert counting.rows[-1] < counting.rows[0]
