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
