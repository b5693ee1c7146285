"""The attention-consistency loss of Explanation-Guided Training."""

from keras import ops

_EPSILON = 1e-7


def resize_map(attention_map, size):
    """Bilinearly resizes attention maps to `size`, antialiased when shrinking.

    Plain bilinear interpolation reads only the 2x2 pixels nearest each output
    pixel: shrinking a 32x32 map to 4x4 would ignore 60 of every 64 pixels.
    Antialiasing widens the bilinear (triangle) kernel to the scale factor, so
    every pixel of the early map counts.

    Args:
        attention_map: tensor `(batch, H, W, 1)`.
        size: `(height, width)` to resize to.

    Returns:
        The resized maps `(batch, height, width, 1)`; unchanged when the size
        already matches.

    Example:
    >>> resize_map(np.ones((1, 8, 8, 1), "float32"), (4, 4)).shape
    (1, 4, 4, 1)
    """
    if tuple(attention_map.shape[1:3]) == tuple(size):
        return attention_map
    return ops.image.resize(attention_map, size, interpolation="bilinear", antialias=True)


def attention_consistency(early_map, final_map):
    """Cosine similarity of each early map (resized) with the final map, per sample.

    Args:
        early_map: tensor `(batch, H_k, W_k, 1)`, an early exit's attention maps.
        final_map: tensor `(batch, H, W, 1)`, the final exit's attention maps.

    Returns:
        A tensor `(batch,)` of cos(vec(resize(A_k)), vec(A_5)).

    Example:
    >>> a = np.random.rand(2, 8, 8, 1).astype("float32")
    >>> attention_consistency(a, a)        # [1., 1.]
    """
    resized = resize_map(early_map, tuple(final_map.shape[1:3]))
    batch = ops.shape(final_map)[0]
    a = ops.reshape(resized, (batch, -1))
    b = ops.reshape(ops.cast(final_map, a.dtype), (batch, -1))
    dot = ops.sum(a * b, axis=-1)
    norms = ops.sqrt(ops.sum(a * a, axis=-1) * ops.sum(b * b, axis=-1))
    return dot / ops.maximum(norms, _EPSILON)


def exit_consistencies(attention_maps, stop_gradient_target=True):
    """Batch-mean consistency of every early exit with the final exit.

    Args:
        attention_maps: list of K tensors `(batch, H_k, W_k, 1)`, first exit first.
        stop_gradient_target: treat the final map as a constant (see
            `consistency_loss`).

    Returns:
        A list of K - 1 scalar tensors, `mean_batch cos(resize(A_k), A_K)`.

    Example:
    >>> exit_consistencies(model.attention_maps(x))   # [c1, c2, c3, c4]
    """
    if len(attention_maps) < 2:
        raise ValueError(
            f"attention consistency needs at least 2 attention maps, got {len(attention_maps)}."
        )
    attention_maps = [ops.convert_to_tensor(m) for m in attention_maps]
    target = attention_maps[-1]
    if stop_gradient_target:
        target = ops.stop_gradient(target)
    return [ops.mean(attention_consistency(m, target)) for m in attention_maps[:-1]]


def consistency_loss(attention_maps, stop_gradient_target=True):
    """The EGT attention-consistency loss.

    `L_cons = 1/(K-1) * sum_{k<K} mean_batch(1 - cos(resize(A_k), A_K))`, where `A_K`
    is the final exit's map.

    Args:
        attention_maps: list of K tensors `(batch, H_k, W_k, 1)`, first exit first.
        stop_gradient_target: if True (the default), the final map is a fixed
            target: the loss moves the early exits towards the final one and never
            drags the final exit's attention towards shallower, cruder maps (with
            gradients on both sides, a uniform map at every exit is a trivial
            minimum). False lets gradients reach both maps.

    Returns:
        A scalar tensor in [0, 2].

    Example:
    >>> consistency_loss(model.attention_maps(x))
    """
    terms = exit_consistencies(attention_maps, stop_gradient_target)
    return 1.0 - sum(terms) / len(terms)
