"""The attention-consistency loss of Explanation-Guided Training, and its variants.

Every variant is one call of `consistency_terms(maps, target, loss)`: one term per
early exit k = 1..K-1, each a batch mean, which `weighted_consistency` combines with
λ (one number, or one per early exit).

* **Target** (`target=`): `"final"`, the paper's EGT, compares exit k with the
  final exit K; `"next"` (hierarchical) compares exit k with exit k+1, so each
  exit is pulled towards its immediate successor.
* **Loss** (`loss=`), on early map `A_k` bilinearly resized to the target's size
  `A_t` and both flattened to vectors `a`, `b`:
  - `"cosine"` (EGT): `1 - cos(a, b)`, in [0, 1] for non-negative maps.
  - `"attention_transfer"` (Zagoruyko & Komodakis, ICLR 2017, eq. 2 with p = 2):
    `|| a/||a||_2 - b/||b||_2 ||_2`, the Euclidean distance of the L2-normalised
    maps, in [0, sqrt(2)] for non-negative maps. It equals `sqrt(2 - 2 cos(a, b))`:
    the same minimiser as the cosine loss, but its gradient grows as the maps
    converge (d/dcos = -1/term), where the cosine loss's stays constant. Here the
    compared maps are the exits' spatial attention maps (softmax over H x W, see
    `keras_egt.layers.ExitHead`), not the channel-pooled activation maps
    `sum_c |F_c|^2` of the original paper, and the term is used unsquared and
    unscaled: λ is its only weight (the paper's β/2).
"""

from keras import ops

_EPSILON = 1e-7

CONSISTENCY_TARGETS = ("final", "next")
CONSISTENCY_LOSSES = ("cosine", "attention_transfer")


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


def check_consistency_options(target, loss, weight, num_early_exits):
    """Validates the consistency options; returns `(target, loss, weight)` normalised.

    Args:
        target: `"final"` or `"next"`.
        loss: `"cosine"` or `"attention_transfer"`.
        weight: λ >= 0, one number or a sequence of `num_early_exits` numbers.
        num_early_exits: K - 1.

    Returns:
        `(target, loss, weight)`, `weight` a float or a tuple of floats.
    """
    import math

    if target not in CONSISTENCY_TARGETS:
        raise ValueError(
            f"consistency_target must be one of {CONSISTENCY_TARGETS} (\"final\": every early "
            f"exit vs the last exit, the paper's EGT; \"next\": exit k vs exit k+1), got {target!r}."
        )
    if loss not in CONSISTENCY_LOSSES:
        raise ValueError(
            f"consistency_loss must be one of {CONSISTENCY_LOSSES} (\"cosine\": EGT's 1 - cos; "
            f"\"attention_transfer\": Zagoruyko & Komodakis 2017), got {loss!r}."
        )
    if isinstance(weight, (list, tuple)):
        weight = tuple(float(w) for w in weight)
        if len(weight) != num_early_exits:
            raise ValueError(
                f"consistency_weight holds {len(weight)} values; give one λ per early exit "
                f"({num_early_exits}) or a single number."
            )
        values = weight
    else:
        weight = float(weight)
        values = (weight,)
    if any(not math.isfinite(w) or w < 0 for w in values):
        raise ValueError(
            f"consistency_weight (λ) must be finite numbers >= 0, got {weight}."
        )
    return target, loss, weight


def _pair_term(early_map, target_map, loss):
    resized = resize_map(early_map, tuple(target_map.shape[1:3]))
    batch = ops.shape(target_map)[0]
    a = ops.reshape(resized, (batch, -1))
    b = ops.reshape(ops.cast(target_map, a.dtype), (batch, -1))
    if loss == "cosine":
        dot = ops.sum(a * b, axis=-1)
        norms = ops.sqrt(ops.sum(a * a, axis=-1) * ops.sum(b * b, axis=-1))
        return 1.0 - dot / ops.maximum(norms, _EPSILON)
    a = a / ops.maximum(ops.sqrt(ops.sum(a * a, axis=-1, keepdims=True)), _EPSILON)
    b = b / ops.maximum(ops.sqrt(ops.sum(b * b, axis=-1, keepdims=True)), _EPSILON)
    # The epsilon keeps the gradient finite where the two maps coincide.
    return ops.sqrt(ops.sum(ops.square(a - b), axis=-1) + _EPSILON**2)


def consistency_terms(attention_maps, target="final", loss="cosine", stop_gradient_target=True):
    """One consistency-loss term per early exit (batch means), for every variant.

    Term k (k = 1..K-1) compares exit k's map, resized to its target's size, with the
    target map: exit K's for `target="final"`, exit k+1's for `target="next"`; see
    the module docstring for the two losses. With `stop_gradient_target` the target
    map of each term is a constant, so term k's gradient reaches exit k's attention
    only (with `"next"`, exit k+1 still gets its own term's gradient).

    Args:
        attention_maps: list of K >= 2 tensors `(batch, H_k, W_k, 1)`, first exit first.
        target: `"final"` or `"next"`.
        loss: `"cosine"` or `"attention_transfer"`.
        stop_gradient_target: treat the target maps as constants.

    Returns:
        A list of K - 1 scalar tensors.

    Example:
    >>> terms = consistency_terms(model.attention_maps(x), target="next")
    >>> penalty = weighted_consistency(terms, [0.1, 0.2, 0.3, 0.4])
    """
    if len(attention_maps) < 2:
        raise ValueError(
            f"attention consistency needs at least 2 attention maps, got {len(attention_maps)}."
        )
    check_consistency_options(target, loss, 0.0, len(attention_maps) - 1)
    maps = [ops.convert_to_tensor(m) for m in attention_maps]
    terms = []
    for k in range(len(maps) - 1):
        goal = maps[-1] if target == "final" else maps[k + 1]
        if stop_gradient_target:
            goal = ops.stop_gradient(goal)
        terms.append(ops.mean(_pair_term(maps[k], goal, loss)))
    return terms


def weighted_consistency(terms, weight):
    """Combines the per-early-exit terms with λ: `1/(K-1) * sum_k λ_k * term_k`.

    A single λ is the same as `[λ] * (K - 1)`: `λ * mean_k term_k`, the paper's
    `λ * L_cons`. Terms whose λ_k is 0 are left out.

    Args:
        terms: the K - 1 scalar tensors of `consistency_terms`.
        weight: λ, one number or one per early exit.

    Returns:
        A scalar tensor, or None when every λ_k is 0 (nothing to add: the baseline).

    Example:
    >>> model.add_loss(weighted_consistency(terms, 0.3))
    """
    if not isinstance(weight, (list, tuple)):
        return None if float(weight) == 0.0 else float(weight) * (sum(terms) / len(terms))
    weights = list(weight)
    if len(weights) != len(terms):
        raise ValueError(f"{len(weights)} weights for {len(terms)} consistency terms.")
    parts = [float(w) * t for w, t in zip(weights, terms) if float(w) != 0.0]
    if not parts:
        return None
    return sum(parts) / len(terms)
