import keras
import numpy as np
import pytest
from keras import ops

import references as ref
from keras_egt import layers


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


def test_conv_block_shapes():
    x = np.zeros((2, 32, 32, 3), "float32")
    assert tuple(layers.ConvBlock(8)(x).shape) == (2, 16, 16, 8)
    assert tuple(layers.ConvBlock(8, pool=False)(x).shape) == (2, 32, 32, 8)


@pytest.mark.parametrize(
    "layer, shape",
    [
        (layers.ConvBlock(8, pool=False, batch_norm_momentum=0.8), (2, 8, 8, 3)),
        (layers.SpatialAttention(hidden_channels=4), (2, 8, 8, 16)),
        (layers.ExitHead(4, hidden_channels=3), (2, 8, 8, 16)),
    ],
)
def test_layers_serialise(layer, shape):
    x = np.random.default_rng(2).normal(size=shape).astype("float32")
    y = ops.convert_to_numpy(layer(x))
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    clone(x)
    clone.set_weights(layer.get_weights())
    assert clone.get_config() == layer.get_config()
    np.testing.assert_allclose(ops.convert_to_numpy(clone(x)), y, atol=1e-6)
