import numpy as np
import pytest
from keras import ops

import references as ref
from keras_egt import losses


def _np(x):
    return ops.convert_to_numpy(x)


def _maps(rng, sizes, batch=3):
    return [rng.random((batch, s, s, 1)).astype("float32") for s in sizes]


def test_identical_maps_give_zero_loss():
    rng = np.random.default_rng(0)
    a = _maps(rng, [4])[0]
    assert float(_np(losses.consistency_loss([a, a, a]))) == pytest.approx(0.0, abs=1e-6)


def test_orthogonal_maps_give_loss_one():
    early = np.zeros((2, 4, 4, 1), "float32")
    final = np.zeros((2, 4, 4, 1), "float32")
    early[:, :2] = 1.0  # top half
    final[:, 2:] = 1.0  # bottom half: no overlap, cosine 0
    assert float(_np(losses.consistency_loss([early, final]))) == pytest.approx(1.0, abs=1e-6)


def test_known_resize_value():
    # An 8x8 map whose left half is 1 and right half 0, against a 4x4 target that
    # is 1 in column 0 only. Antialiased bilinear 2x shrink: each output column mixes
    # input columns with weights (1/8, 3/8, 3/8, 1/8) (edges renormalised), so the
    # resized columns are [1, 7/8, 1/8, 0] and cos = 1 / sqrt(1 + 49/64 + 1/64).
    early = np.zeros((1, 8, 8, 1), "float32")
    early[:, :, :4] = 1.0
    final = np.zeros((1, 4, 4, 1), "float32")
    final[:, :, 0] = 1.0
    expected = 1.0 / np.sqrt(1 + 49 / 64 + 1 / 64)
    got = float(_np(losses.attention_consistency(early, final))[0])
    assert got == pytest.approx(expected, abs=1e-6)
    assert got == pytest.approx(ref.consistency(early, final)[0], abs=1e-6)


@pytest.mark.parametrize("size", [32, 16, 12, 8, 4])
def test_resize_matches_numpy_reference(size):
    rng = np.random.default_rng(size)
    maps = _maps(rng, [size])[0]
    got = _np(losses.resize_map(maps, (4, 4)))
    np.testing.assert_allclose(got, ref.resize(maps, (4, 4)), atol=1e-6)


def test_consistency_loss_matches_numpy_formula():
    rng = np.random.default_rng(1)
    maps = _maps(rng, [32, 16, 8, 4, 4], batch=5)
    expected = np.mean([1 - ref.consistency(m, maps[-1]).mean() for m in maps[:-1]])
    assert float(_np(losses.consistency_loss(maps))) == pytest.approx(expected, abs=1e-5)
    per_exit = [float(_np(c)) for c in losses.exit_consistencies(maps)]
    np.testing.assert_allclose(
        per_exit, [ref.consistency(m, maps[-1]).mean() for m in maps[:-1]], atol=1e-5
    )


def test_needs_two_maps():
    with pytest.raises(ValueError, match="at least 2"):
        losses.consistency_loss([np.ones((1, 4, 4, 1), "float32")])


# --- variants: hierarchical target, per-exit λ, Attention Transfer -------------------

VARIANTS = [(t, l) for t in ("final", "next") for l in ("cosine", "attention_transfer")]


def _map_gradients(fn, maps):
    """Gradients of the scalar `fn(*maps)` w.r.t. every map, by the backend's autodiff."""
    from kit import BACKEND

    if BACKEND == "tensorflow":
        import tensorflow as tf

        tensors = [tf.constant(m) for m in maps]
        with tf.GradientTape() as tape:
            tape.watch(tensors)
            value = fn(*tensors)
        grads = tape.gradient(value, tensors)
        return [np.zeros(m.shape) if g is None else _np(g) for g, m in zip(grads, maps)]
    if BACKEND == "torch":
        import torch

        tensors = [torch.tensor(m, requires_grad=True) for m in maps]
        grads = torch.autograd.grad(fn(*tensors), tensors, allow_unused=True)
        return [np.zeros(m.shape) if g is None else _np(g) for g, m in zip(grads, maps)]
    import jax

    return [np.asarray(g) for g in jax.grad(lambda *t: fn(*t), argnums=tuple(range(len(maps))))(*maps)]


@pytest.mark.parametrize("target,loss", VARIANTS)
def test_variant_terms_match_numpy(target, loss):
    rng = np.random.default_rng(2)
    maps = _maps(rng, [16, 8, 4, 4], batch=4)
    got = [float(_np(t)) for t in losses.consistency_terms(maps, target=target, loss=loss)]
    np.testing.assert_allclose(got, ref.consistency_variant_terms(maps, target, loss), atol=1e-5)


@pytest.mark.parametrize("target,loss", VARIANTS)
def test_variant_gradients_match_numpy(target, loss):
    # Per-exit λ, targets held constant: term k moves exit k's map only, towards the
    # final map ("final") or exit k+1's ("next"); the last map gets no gradient.
    rng = np.random.default_rng(3)
    maps = _maps(rng, [8, 8, 4, 4], batch=3)
    weights = [0.1, 0.5, 0.9]

    def penalty(*tensors):
        terms = losses.consistency_terms(list(tensors), target=target, loss=loss)
        return losses.weighted_consistency(terms, weights)

    got = _map_gradients(penalty, maps)
    expected = ref.consistency_variant_gradients(maps, weights, target, loss)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=2e-3, atol=1e-6)
    assert np.abs(got[-1]).max() == 0.0


def test_hierarchical_target_differs_from_final():
    rng = np.random.default_rng(4)
    maps = _maps(rng, [8, 8, 4, 4], batch=3)
    final = [float(_np(t)) for t in losses.consistency_terms(maps, target="final")]
    nxt = [float(_np(t)) for t in losses.consistency_terms(maps, target="next")]
    assert final[-1] == pytest.approx(nxt[-1], abs=1e-6)  # the last early exit's next is the final
    assert abs(final[0] - nxt[0]) > 1e-3


def test_attention_transfer_is_the_distance_of_the_normalised_maps():
    # ||u - v||_2 = sqrt(2 - 2 cos) for unit vectors: the documented identity.
    rng = np.random.default_rng(5)
    maps = _maps(rng, [4, 4], batch=1)
    at = float(_np(losses.consistency_terms(maps, loss="attention_transfer")[0]))
    cos = float(ref.cosine(maps[0], maps[1])[0])
    assert at == pytest.approx(np.sqrt(2 - 2 * cos), abs=1e-5)


def test_lambda_zero_adds_nothing_and_a_single_lambda_is_its_list():
    rng = np.random.default_rng(6)
    maps = _maps(rng, [8, 8, 4, 4], batch=3)
    terms = losses.consistency_terms(maps)
    assert losses.weighted_consistency(terms, 0.0) is None
    assert losses.weighted_consistency(terms, [0.0, 0.0, 0.0]) is None
    single = float(_np(losses.weighted_consistency(terms, 0.3)))
    listed = float(_np(losses.weighted_consistency(terms, [0.3, 0.3, 0.3])))
    assert single == pytest.approx(listed, abs=1e-6)
    # The default variant at λ = 1 is the paper's loss exactly.
    assert single / 0.3 == pytest.approx(float(_np(losses.consistency_loss(maps))), abs=1e-6)
    only_first = float(_np(losses.weighted_consistency(terms, [0.6, 0.0, 0.0])))
    assert only_first == pytest.approx(0.6 * float(_np(terms[0])) / 3, abs=1e-6)


def test_bad_variant_options_are_refused():
    maps = [np.ones((1, 4, 4, 1), "float32")] * 3
    with pytest.raises(ValueError, match="consistency_target"):
        losses.consistency_terms(maps, target="previous")
    with pytest.raises(ValueError, match="consistency_loss"):
        losses.consistency_terms(maps, loss="l2")
    with pytest.raises(ValueError, match="one λ per early exit"):
        losses.check_consistency_options("final", "cosine", [0.1, 0.2], 3)
    with pytest.raises(ValueError, match="λ"):
        losses.check_consistency_options("final", "cosine", [0.1, -0.2, 0.3], 3)


# --- the variants on the model -----------------------------------------------------

def _tiny_model(**kwargs):
    import keras_egt as egt

    return egt.EarlyExitCNN(3, (32, 32, 2), widths=(4, 4, 4, 4, 4), **kwargs)


def test_model_default_loss_is_the_papers_and_lambda_zero_adds_none():
    from kit import blob_task

    x, _ = blob_task(n=4)
    model = _tiny_model(consistency_weight=0.3)
    model(x, training=False)
    maps = [_np(m) for m in model.attention_maps(x)]
    expected = 0.3 * np.mean([1 - ref.consistency(m, maps[-1]).mean() for m in maps[:-1]])
    assert float(_np(sum(model.losses))) == pytest.approx(expected, abs=1e-5)
    for options in [{"consistency_target": "next"}, {"consistency_loss": "attention_transfer"},
                    {"consistency_weight": [0.0, 0.0, 0.0, 0.0]}]:
        base = _tiny_model(**{"consistency_weight": 0.0, **options})
        base(x, training=False)
        assert len(base.losses) == 0


@pytest.mark.parametrize("target,loss", VARIANTS)
def test_model_variant_loss_matches_numpy(target, loss):
    from kit import blob_task

    x, _ = blob_task(n=4)
    weights = [0.1, 0.2, 0.3, 0.4]
    model = _tiny_model(consistency_weight=weights, consistency_target=target, consistency_loss=loss)
    model(x, training=False)
    maps = [_np(m) for m in model.attention_maps(x)]
    terms = ref.consistency_variant_terms(maps, target, loss)
    expected = sum(w * t for w, t in zip(weights, terms)) / 4
    assert float(_np(sum(model.losses))) == pytest.approx(expected, abs=1e-5)


def test_model_variant_options_round_trip(tmp_path):
    import keras

    model = _tiny_model(consistency_weight=[0.1, 0.2, 0.3, 0.4], consistency_target="next",
                        consistency_loss="attention_transfer")
    again = model.__class__.from_config(model.get_config())
    assert again.consistency_weight == (0.1, 0.2, 0.3, 0.4)
    assert again.consistency_target == "next" and again.consistency_loss == "attention_transfer"
    path = str(tmp_path / "variant.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.consistency_weight == (0.1, 0.2, 0.3, 0.4)
    assert loaded.consistency_target == "next" and loaded.consistency_loss == "attention_transfer"
    with pytest.raises(ValueError, match="consistency_target"):
        _tiny_model(consistency_target="previous")
    with pytest.raises(ValueError, match="one λ per early exit"):
        _tiny_model(consistency_weight=[0.1, 0.2])
