import numpy as np
import pytest
from keras import ops

import references as ref
from keras_egt import layers
from kit import run_layer_test, to_numpy


def test_spatial_softmax_matches_numpy():
    scores = np.random.default_rng(0).normal(size=(3, 5, 4, 1)).astype("float32")
    got = ops.convert_to_numpy(layers.spatial_softmax(scores))
    np.testing.assert_allclose(got, ref.spatial_softmax(scores), atol=1e-6)
    np.testing.assert_allclose(got.sum(axis=(1, 2, 3)), 1.0, atol=1e-5)


@pytest.mark.parametrize("size, grid, cells", [(8, 4, 4), (10, 4, 5), (6, 1, 1), (2, 4, 2)])
def test_exit_head_formula_and_map(size, grid, cells):
    rng = np.random.default_rng(1)
    features = rng.normal(size=(2, size, size, 16)).astype("float32")
    head = layers.ExitHead(5, hidden_channels=4, grid=grid)
    logits, attention = head(features, return_attention=True)
    scores = ops.convert_to_numpy(head.attention(features)).astype(np.float64)
    gated = features / (1 + np.exp(-scores))
    window = max(1, size // grid)
    # Average over each window x window block of the valid region, row-major cells.
    pooled = np.stack(
        [
            gated[:, i * window : (i + 1) * window, j * window : (j + 1) * window].mean(axis=(1, 2))
            for i in range(cells)
            for j in range(cells)
        ],
        axis=1,
    ).reshape(2, -1)
    kernel, bias = (ops.convert_to_numpy(w) for w in head.classifier.weights)
    assert kernel.shape == (cells * cells * 16, 5)
    np.testing.assert_allclose(ops.convert_to_numpy(logits), pooled @ kernel + bias, atol=1e-4)
    attention = ops.convert_to_numpy(attention)
    assert attention.shape == (2, size, size, 1)
    assert attention.min() >= 0 and attention.max() <= 1
    np.testing.assert_allclose(attention, ref.spatial_softmax(scores), atol=1e-6)


def test_conv_block_layer():
    x = np.random.default_rng(3).normal(size=(2, 8, 8, 3)).astype("float32")
    # conv kernel, gamma, beta; moving mean and variance.
    layer, out = run_layer_test(
        layers.ConvBlock, {"filters": 6, "batchnorm_momentum": 0.8}, x, (2, 4, 4, 6),
        expected_num_trainable_weights=3, expected_num_non_trainable_weights=2,
    )
    kernel = to_numpy(layer.conv.kernel)
    gamma, beta, mean, var = (to_numpy(w) for w in layer.bn.weights)
    z = ref.conv2d_same(x, kernel, 0.0)
    z = np.maximum(gamma * (z - mean) / np.sqrt(var + layer.bn.epsilon) + beta, 0.0)
    pooled = z.reshape(2, 4, 2, 4, 2, 6).max(axis=(2, 4))
    np.testing.assert_allclose(to_numpy(out), pooled, atol=1e-5)
    assert tuple(layers.ConvBlock(8, pool=False)(x).shape) == (2, 8, 8, 8)


@pytest.mark.parametrize("hidden, expected_hidden", [(4, 4), (None, 8)])
def test_spatial_attention_layer_and_score_formula(hidden, expected_hidden):
    x = np.random.default_rng(4).normal(size=(2, 6, 5, 16)).astype("float32")
    layer, scores = run_layer_test(
        layers.SpatialAttention, {"hidden_channels": hidden}, x, (2, 6, 5, 1),
        expected_num_trainable_weights=4,
    )
    reduce_kernel, reduce_bias = (to_numpy(w) for w in layer.reduce.weights)
    score_kernel, score_bias = (to_numpy(w) for w in layer.score.weights)
    assert reduce_kernel.shape == (1, 1, 16, expected_hidden)
    assert score_kernel.shape == (3, 3, expected_hidden, 1)
    # Non-zero biases, so a missing bias or ReLU cannot hide behind zeros.
    rng = np.random.default_rng(5)
    layer.reduce.bias.assign(rng.normal(size=reduce_bias.shape).astype("float32"))
    layer.score.bias.assign(rng.normal(size=score_bias.shape).astype("float32"))
    expected = ref.attention_scores(x, reduce_kernel, to_numpy(layer.reduce.bias),
                                    score_kernel, to_numpy(layer.score.bias))
    np.testing.assert_allclose(to_numpy(layer(x)), expected, atol=1e-5)


def test_exit_head_layer():
    x = np.random.default_rng(6).normal(size=(2, 8, 8, 16)).astype("float32")
    # reduce, score and classifier kernels and biases.
    run_layer_test(layers.ExitHead, {"num_classes": 4, "hidden_channels": 3}, x, (2, 4),
                   expected_num_trainable_weights=6)
    run_layer_test(layers.ExitHead, {"num_classes": 4, "hidden_channels": 3}, x,
                   ((2, 4), (2, 8, 8, 1)), expected_num_trainable_weights=6,
                   call_kwargs={"return_attention": True})
