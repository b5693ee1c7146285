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


def consistency_variant_terms(maps, target="final", loss="cosine"):
    """Per-early-exit terms (batch means) of EGT's cosine or Attention Transfer loss,
    against the final map or the next exit's."""
    terms = []
    for k in range(len(maps) - 1):
        goal = maps[-1] if target == "final" else maps[k + 1]
        a = resize(maps[k].astype(np.float64), goal.shape[1:3]).reshape(len(goal), -1)
        b = goal.reshape(len(goal), -1).astype(np.float64)
        if loss == "cosine":
            terms.append(float(np.mean(1 - cosine(a, b))))
        else:
            u = a / np.linalg.norm(a, axis=1, keepdims=True)
            v = b / np.linalg.norm(b, axis=1, keepdims=True)
            terms.append(float(np.mean(np.linalg.norm(u - v, axis=1))))
    return terms


def consistency_variant_gradients(maps, weights, target="final", loss="cosine"):
    """Gradient of `1/(K-1) sum_k w_k term_k` w.r.t. every map, targets held constant
    (stop-gradient), derived by hand: d(1 - cos)/da = -(b/(|a||b|) - (a.b) a/(|a|^3|b|));
    d||u - v||/da = (I - u u^T)(u - v) / (|a| ||u - v||) with u = a/|a|; chained
    through the resize matrices (a = R_rows A R_cols^T)."""
    grads = [np.zeros(m.shape, np.float64) for m in maps]
    scale = 1.0 / (len(maps) - 1)
    for k in range(len(maps) - 1):
        goal = maps[-1] if target == "final" else maps[k + 1]
        batch, size = len(goal), goal.shape[1:3]
        rows = resize_weights(maps[k].shape[1], size[0])
        cols = resize_weights(maps[k].shape[2], size[1])
        a = np.einsum("ij,bjkc,lk->bilc", rows, maps[k].astype(np.float64), cols).reshape(batch, -1)
        b = goal.reshape(batch, -1).astype(np.float64)
        na = np.linalg.norm(a, axis=1, keepdims=True)
        nb = np.linalg.norm(b, axis=1, keepdims=True)
        if loss == "cosine":
            dot = (a * b).sum(1, keepdims=True)
            g = -(b / (na * nb) - dot * a / (na**3 * nb))
        else:
            u, v = a / na, b / nb
            dist = np.linalg.norm(u - v, axis=1, keepdims=True)
            d = (u - v) / dist
            g = (d - u * (u * d).sum(1, keepdims=True)) / na
        g = (weights[k] * scale / batch) * g.reshape((batch,) + tuple(size) + (1,))
        grads[k] += np.einsum("ij,bilc,lk->bjkc", rows, g, cols)
    return grads


def deletion_insertion(probability, x, saliency, steps, baseline, random_orders=None):
    """Mean deletion and insertion curves, one sample and one step at a time.

    `probability(image)` gives the class probability read along the curve;
    `saliency` `(n, H, W)` orders the pixels (largest first, ties by index), or
    `random_orders` `(n, H*W)` gives the pixel orders directly."""
    n, h, w, _ = x.shape
    cells = h * w
    counts = [int(round(i * cells / steps)) for i in range(steps + 1)]
    deletion = np.zeros((n, steps + 1))
    insertion = np.zeros((n, steps + 1))
    for s in range(n):
        if random_orders is None:
            order = np.argsort(-saliency[s].reshape(-1), kind="stable")
        else:
            order = random_orders[s]
        for i, count in enumerate(counts):
            removed = np.zeros(cells, bool)
            removed[order[:count]] = True
            removed = removed.reshape(h, w)
            deleted = x[s].copy()
            deleted[removed] = baseline
            inserted = np.full_like(x[s], baseline)
            inserted[removed] = x[s][removed]
            deletion[s, i] = probability(s, deleted)
            insertion[s, i] = probability(s, inserted)
    fractions = np.array(counts) / cells
    return fractions, deletion.mean(0), insertion.mean(0)


def spearman(a, b):
    """Spearman rank correlation of two 1-D arrays (scipy, as the reference)."""
    from scipy import stats

    return float(stats.spearmanr(a, b).statistic)


def conv2d_same(x, kernel, bias):
    """Stride-1 2-D convolution with zero "same" padding: `x (B, H, W, C)`, `kernel (kh, kw, C, O)`."""
    kh, kw = kernel.shape[:2]
    x = x.astype(np.float64)
    padded = np.pad(x, ((0, 0), (kh // 2, (kh - 1) // 2), (kw // 2, (kw - 1) // 2), (0, 0)))
    h, w = x.shape[1:3]
    out = np.zeros(x.shape[:3] + (kernel.shape[3],))
    for i in range(kh):
        for j in range(kw):
            out += np.einsum("bhwc,co->bhwo", padded[:, i : i + h, j : j + w], kernel[i, j])
    return out + bias


def attention_scores(features, reduce_kernel, reduce_bias, score_kernel, score_bias):
    """The paper's attention scores conv3x3(relu(conv1x1(F)))."""
    hidden = np.maximum(conv2d_same(features, reduce_kernel, reduce_bias), 0.0)
    return conv2d_same(hidden, score_kernel, score_bias)


def cross_entropy(logits, labels):
    """Mean sparse categorical cross-entropy of `logits (n, C)`."""
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    return -log_p[np.arange(len(labels)), labels].mean()


def oracle_exits(correct):
    """Earliest correct exit per sample, else the last: `correct (K, n)` booleans."""
    k = correct.shape[0]
    return np.array([next((e for e in range(k) if correct[e, i]), k - 1)
                     for i in range(correct.shape[1])])


def first_confident_exit(probabilities, thresholds):
    """First exit whose max probability reaches its threshold, else the last: `(K, n, C)`."""
    k = probabilities.shape[0]
    confidence = probabilities.max(-1)
    return np.array([next((e for e in range(k - 1) if confidence[e, i] >= thresholds[e]), k - 1)
                     for i in range(probabilities.shape[1])])
