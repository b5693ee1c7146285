"""Independent numpy references for the tests (no keras_egt code)."""

import numpy as np


def resize_weights(n_in, n_out):
    """1-D antialiased bilinear (triangle kernel) resampling matrix, half-pixel centres."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    weights = np.zeros((n_out, n_in))
    for i in range(n_out):
        centre = (i + 0.5) * scale
        for j in range(n_in):
            weights[i, j] = max(0.0, 1.0 - abs(j + 0.5 - centre) / support)
        weights[i] /= weights[i].sum()
    return weights


def resize(maps, size):
    """Resizes `(batch, H, W, 1)` maps with `resize_weights` along each axis."""
    rows = resize_weights(maps.shape[1], size[0])
    cols = resize_weights(maps.shape[2], size[1])
    return np.einsum("ij,bjkc,lk->bilc", rows, maps, cols)


def cosine(a, b):
    """Per-sample cosine similarity of flattened arrays."""
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))


def consistency(early, final):
    """cos(resize(early), final) per sample, the paper's Table I metric."""
    return cosine(resize(early, final.shape[1:3]), final)


def spatial_softmax(scores):
    flat = scores.reshape(len(scores), -1).astype(np.float64)
    e = np.exp(flat - flat.max(1, keepdims=True))
    return (e / e.sum(1, keepdims=True)).reshape(scores.shape)
