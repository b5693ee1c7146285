"""explanation_quality on hand-made models whose evidence is known, against numpy."""

import keras
import numpy as np
import pytest
from keras import ops

import keras_egt as egt
import references as ref
from keras_egt import explanations, metrics

SIZE = 8
STEPS = 8


def _quadrant_maps(kind):
    """Exit 1's 8x8 map and exit 2's 2x2 map: the top-left quadrant first ("right")
    or last ("wrong"); distinct values at 8x8 so the order has no ties."""
    idx = np.arange(SIZE * SIZE).reshape(SIZE, SIZE)
    inside = np.zeros((SIZE, SIZE), bool)
    inside[:4, :4] = True
    fine = np.where(inside, 2.0, 1.0) if kind == "right" else np.where(inside, 1.0, 2.0)
    fine = fine - 1e-3 * idx
    coarse = np.array([[1.0, 0.0], [0.0, 0.0]]) if kind == "right" else np.array([[0.0, 1.0], [1.0, 1.0]])
    return fine.astype("float32"), (coarse + 0.01).astype("float32")


@keras.saving.register_keras_serializable(package="keras_egt_tests")
class QuadrantModel(keras.Model):
    """Two exits that both decide on the mean of the top-left quadrant (channel 0):
    logits (0, g_k * mean), g = (3, 6). Their attention maps are set by hand."""

    def __init__(self, kind="right", **kwargs):
        super().__init__(**kwargs)
        self.kind = kind
        self.image_shape = (SIZE, SIZE, 1)
        self.num_classes = 2
        self._fine, self._coarse = _quadrant_maps(kind)

    def call(self, x):
        evidence = ops.mean(x[:, :4, :4, 0], axis=(1, 2))
        zero = ops.zeros_like(evidence)
        return [ops.stack([zero, 3.0 * evidence], -1), ops.stack([zero, 6.0 * evidence], -1)]

    def attention_maps(self, x):
        batch = ops.shape(ops.convert_to_tensor(x))[0]
        return [ops.broadcast_to(ops.convert_to_tensor(m)[None, :, :, None], (batch,) + m.shape + (1,))
                for m in (self._fine, self._coarse)]

    def get_config(self):
        return {**super().get_config(), "kind": self.kind}


def _quadrant_data(n=12, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, SIZE, SIZE, 1)).astype("float32")
    # Constant within the quadrant: the evidence is the number of its cells left.
    sign = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
    x[:, :4, :4, 0] = (sign * rng.uniform(0.5, 1.5, size=n))[:, None, None]
    return x, (sign > 0).astype("int32")


def _quadrant_probability(x):
    """The numpy model: per exit, p(class c | image) for the class it predicts on x."""
    gains = (3.0, 6.0)

    def exit_probability(k):
        def p(s, image):
            predicted = 1 if gains[k] * x[s, :4, :4, 0].mean() > 0 else 0
            z = gains[k] * image[:4, :4, 0].mean()
            p1 = 1.0 / (1.0 + np.exp(-z))
            return p1 if predicted == 1 else 1.0 - p1

        return p

    return [exit_probability(0), exit_probability(1)]


@pytest.mark.parametrize("kind", ["right", "wrong"])
def test_deletion_and_insertion_match_numpy(kind):
    x, y = _quadrant_data()
    model = QuadrantModel(kind)
    quality = egt.explanation_quality(model, x, y, steps=STEPS, baseline=0.0, seed=3)
    fine, coarse = _quadrant_maps(kind)
    saliency = [np.broadcast_to(fine, (len(x), SIZE, SIZE)),
                ref.resize(np.broadcast_to(coarse, (len(x), 2, 2))[..., None].astype(np.float64),
                           (SIZE, SIZE))[..., 0]]
    orders = np.argsort(np.random.default_rng(3).random((len(x), SIZE * SIZE)), axis=1)
    for k, probability in enumerate(_quadrant_probability(x)):
        fractions, deletion, insertion = ref.deletion_insertion(probability, x, saliency[k], STEPS, 0.0)
        np.testing.assert_allclose(quality.fractions, fractions)
        np.testing.assert_allclose(quality.curves["deletion"][k], deletion, atol=1e-5)
        np.testing.assert_allclose(quality.curves["insertion"][k], insertion, atol=1e-5)
        _, r_del, r_ins = ref.deletion_insertion(probability, x, None, STEPS, 0.0, orders)
        np.testing.assert_allclose(quality.curves["random_deletion"][k], r_del, atol=1e-5)
        np.testing.assert_allclose(quality.curves["random_insertion"][k], r_ins, atol=1e-5)
        e = quality.to_dict()["exits"][k]
        assert e["deletion_auc"] == pytest.approx(np.trapezoid(deletion, fractions), abs=1e-5)
        assert e["insertion_auc"] == pytest.approx(np.trapezoid(insertion, fractions), abs=1e-5)
    assert quality.accuracy == [1.0, 1.0]


def test_attention_order_beats_random_and_a_wrong_map_loses():
    x, y = _quadrant_data(n=16, seed=1)
    right = egt.explanation_quality(QuadrantModel("right"), x, y, steps=STEPS, baseline=0.0)
    wrong = egt.explanation_quality(QuadrantModel("wrong"), x, y, steps=STEPS, baseline=0.0)
    for e in right.exits:
        assert e["deletion_auc"] < e["random_deletion_auc"]
        assert e["insertion_auc"] > e["random_insertion_auc"]
    for e in wrong.exits:
        assert e["deletion_auc"] > e["random_deletion_auc"]
        assert e["insertion_auc"] < e["random_insertion_auc"]


def test_report_layout_and_round_trip(tmp_path):
    x, y = _quadrant_data()
    quality = egt.explanation_quality(QuadrantModel("right"), x, y, steps=4, baseline=0.0)
    data = quality.to_dict()
    assert len(data["exits"]) == 2
    for e in data["exits"]:
        assert set(e) == set(explanations.EXIT_KEYS)
    # The final exit is the consistency reference.
    assert data["exits"][-1]["consistency"] is None
    again = explanations.ExplanationQuality.from_dict(data)
    assert again.to_dict() == data
    text = quality.to_markdown()
    assert text.count("\n| ") == 3 and "Deletion AUC" in text
    path = egt.plots.deletion_curves(quality, str(tmp_path / "deletion.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    egt.plots.deletion_curves(data, str(tmp_path / "from_dict.png"))


def test_mean_baseline_is_the_channel_mean():
    x, y = _quadrant_data()
    quality = egt.explanation_quality(QuadrantModel("right"), x, y, steps=2)
    assert quality.settings["baseline"] == pytest.approx([float(x[..., 0].mean())], abs=1e-6)


def test_identical_maps_for_every_sample_earn_no_corrected_consistency():
    # The quadrant model's maps are the same for every sample: the chance floor is
    # the consistency itself, whatever its raw value.
    x, y = _quadrant_data()
    e = egt.explanation_quality(QuadrantModel("right"), x, y, steps=2).exits[0]
    assert e["consistency"] > 0.5
    assert e["chance_floor"] == pytest.approx(e["consistency"], abs=1e-6)
    assert e["corrected_consistency"] == pytest.approx(0.0, abs=1e-5)


def test_chance_corrected_on_hand_made_maps():
    assert metrics.chance_corrected([0.8, 0.9], [0.6, 0.5]) == pytest.approx([0.5, 0.8])
    # Early and final maps one-hot at each sample's own cell: consistency 1, floor 0.
    n = 4
    final = np.zeros((n, 2, 2, 1), "float32")
    final.reshape(n, 4, 1)[np.arange(n), np.arange(n)] = 1.0
    maps = [final, final]
    c = metrics.attention_consistency(maps)
    floor = metrics.chance_consistency(maps)
    assert c == pytest.approx([1.0]) and floor == pytest.approx([0.0])
    assert metrics.chance_corrected(c, floor) == pytest.approx([1.0])
    assert np.isnan(metrics.chance_corrected([1.0], [1.0])[0])


@keras.saving.register_keras_serializable(package="keras_egt_tests")
class ConvMapModel(keras.Model):
    """Two exits whose maps are a spatial softmax of the input alone ("input") or of
    a learnt 3x3 convolution of it ("learnt")."""

    def __init__(self, source="learnt", **kwargs):
        super().__init__(**kwargs)
        self.source = source
        self.image_shape = (SIZE, SIZE, 3)
        self.num_classes = 2
        self.conv = keras.layers.Conv2D(1, 3, padding="same", use_bias=False)
        self.dense = keras.layers.Dense(2)

    def build(self, input_shape):
        self.conv.build(input_shape)
        self.dense.build((None, 3))
        self.built = True

    def call(self, x):
        logits = self.dense(ops.mean(x, axis=(1, 2)))
        return [logits, 2.0 * logits]

    def attention_maps(self, x):
        x = ops.convert_to_tensor(x)
        score = x[..., :1] if self.source == "input" else self.conv(x)
        m = egt.spatial_softmax(score)
        return [m, m]

    def get_config(self):
        return {**super().get_config(), "source": self.source}


def _set_trained_kernel(model):
    # "Trained": a detector of channel 0's centre pixel.
    kernel = np.zeros((3, 3, 3, 1), "float32")
    kernel[1, 1, 0, 0] = 1.0
    model.conv.kernel.assign(kernel)


def test_randomisation_check():
    x = np.random.default_rng(0).normal(size=(16, SIZE, SIZE, 3)).astype("float32")
    from_input = ConvMapModel("input")
    from_input.build((None,) + from_input.image_shape)
    e = egt.explanation_quality(from_input, x, steps=2).exits
    assert [v["randomisation_correlation"] for v in e] == pytest.approx([1.0, 1.0], abs=1e-9)
    learnt = ConvMapModel("learnt")
    learnt.build((None,) + learnt.image_shape)
    _set_trained_kernel(learnt)
    quality = egt.explanation_quality(learnt, x, steps=2)
    # The same maps as the input-only model's, and a re-initialised copy's differ.
    fresh = explanations.reinitialised_copy(learnt, seed=0)
    maps = ops.convert_to_numpy(learnt.attention_maps(x)[0]).reshape(len(x), -1)
    fresh_maps = ops.convert_to_numpy(fresh.attention_maps(x)[0]).reshape(len(x), -1)
    expected = np.mean([ref.spearman(a, b) for a, b in zip(maps, fresh_maps)])
    rho = quality.exits[0]["randomisation_correlation"]
    assert rho == pytest.approx(expected, abs=1e-9)
    assert abs(rho) < 0.5


def test_reinitialised_copy_is_reproducible_and_leaves_the_random_state():
    import random

    model = ConvMapModel("learnt")
    model.build((None,) + model.image_shape)
    state = random.getstate()
    a = explanations.reinitialised_copy(model, seed=5)
    b = explanations.reinitialised_copy(model, seed=5)
    c = explanations.reinitialised_copy(model, seed=6)
    assert random.getstate() == state
    np.testing.assert_array_equal(ops.convert_to_numpy(a.conv.kernel), ops.convert_to_numpy(b.conv.kernel))
    assert not np.allclose(ops.convert_to_numpy(a.conv.kernel), ops.convert_to_numpy(c.conv.kernel))


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 4, size=(6, 10)).astype(float)   # many ties
    b = rng.normal(size=(6, 10))
    b[0] = a[0] * 2 + 1
    got = explanations.spearman(a, b)
    np.testing.assert_allclose(got, [ref.spearman(u, v) for u, v in zip(a, b)], atol=1e-12)
    assert got[0] == pytest.approx(1.0)
    assert np.isnan(explanations.spearman(np.ones((1, 4)), b[:1, :4])[0])


def test_on_an_early_exit_cnn():
    # The real model: every figure present and in range for all five exits.
    from kit import blob_task

    x, y = blob_task(n=12)
    model = egt.EarlyExitCNN(3, (32, 32, 2), widths=(4, 4, 4, 4, 4))
    quality = egt.explanation_quality(model, x, y, steps=4, cell_size=4)
    assert quality.num_exits == 5 and quality.curves["deletion"].shape == (5, 5)
    for e in quality.exits:
        for key in ("deletion_auc", "insertion_auc", "random_deletion_auc", "random_insertion_auc"):
            assert 0.0 <= e[key] <= 1.0


def test_bad_arguments():
    x, y = _quadrant_data()
    model = QuadrantModel()
    with pytest.raises(ValueError, match="cell_size"):
        egt.explanation_quality(model, x, y, cell_size=3)
    with pytest.raises(ValueError, match="steps"):
        egt.explanation_quality(model, x, y, steps=0)
    with pytest.raises(ValueError, match="baseline"):
        egt.explanation_quality(model, x, y, baseline="zero")
    with pytest.raises(ValueError, match="at least 2"):
        egt.explanation_quality(model, x[:1], y[:1])
    with pytest.raises(ValueError, match="built for"):
        egt.explanation_quality(model, x[:, :4], y)
