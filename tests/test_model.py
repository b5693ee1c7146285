import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from keras import ops

import keras_egt as egt
import references as ref
from kit import BACKEND, TINY, blob_task, run_model_saving_test, tiny_cnn


def _tiny(consistency_weight=0.3, **kwargs):
    return tiny_cnn(consistency_weight=consistency_weight, **kwargs)


def _np(x):
    return ops.convert_to_numpy(x)


def _gradients(model, x, y, variables, consistency_only=False, plain_ce=False):
    """Gradients of the training loss (or of the added losses alone, or of plain
    cross-entropy on the logits without `model.losses`) w.r.t. `variables`,
    computed with each backend's own autodiff."""
    y_onehot = np.eye(model.num_classes, dtype="float32")[y]

    def loss_of(logits, added):
        if consistency_only:
            return sum(added)
        if plain_ce:
            added = []
        ce = sum(
            ops.mean(keras.losses.categorical_crossentropy(y_onehot, l, from_logits=True))
            for l in logits
        )
        return ce + sum(added)

    if BACKEND == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = loss_of(logits, model.losses)
        return [_np(g) if g is not None else None for g in tape.gradient(loss, [v.value for v in variables])]
    if BACKEND == "torch":
        import torch

        logits = model(x, training=True)
        loss = loss_of(logits, model.losses)
        grads = torch.autograd.grad(loss, [v.value for v in variables], allow_unused=True)
        return [None if g is None else _np(g) for g in grads]
    import jax

    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    index = [next(i for i, t in enumerate(model.trainable_variables) if t is v) for v in variables]

    def fn(values):
        logits, _, added = model.stateless_call(
            values, non_trainable, x, training=True, return_losses=True
        )
        return loss_of(logits, added)

    grads = jax.grad(fn)(trainable)
    return [_np(grads[i]) for i in index]


def _attention_vars(model, exit_index):
    return list(model.heads[exit_index].attention.trainable_variables)


def test_outputs_and_attention_maps():
    model = _tiny()
    x, _ = blob_task(4)
    logits = model(x)
    assert len(logits) == 5 and all(tuple(l.shape) == (4, 3) for l in logits)
    maps = [_np(m) for m in model.attention_maps(x)]
    assert [m.shape[1:3] for m in maps] == [(16, 16), (8, 8), (4, 4), (2, 2), (2, 2)]
    for m in maps:
        assert m.min() >= 0 and m.max() <= 1
        np.testing.assert_allclose(m.sum(axis=(1, 2, 3)), 1.0, atol=1e-5)


def test_added_loss_is_lambda_times_numpy_consistency():
    model = _tiny(consistency_weight=0.4)
    x, _ = blob_task(6)
    model(x, training=False)
    maps = [_np(m) for m in model.attention_maps(x)]
    expected = np.mean([1 - ref.consistency(m, maps[-1]).mean() for m in maps[:-1]])
    assert len(model.losses) == 1
    assert float(_np(model.losses[0])) == pytest.approx(0.4 * expected, rel=1e-4)


def test_lambda_zero_adds_no_term():
    model = _tiny(consistency_weight=0.0)
    model(blob_task(4)[0], training=True)
    assert model.losses == []


def test_consistency_gradient_reaches_early_attention():
    x, y = blob_task(8)
    egt_model = _tiny(consistency_weight=0.5)
    base = _tiny(consistency_weight=0.0)
    base.set_weights(egt_model.get_weights())
    variables = _attention_vars(egt_model, 0)
    g_egt = _gradients(egt_model, x, y, variables)
    g_base = _gradients(base, x, y, _attention_vars(base, 0))
    # With λ > 0 the consistency term adds its own gradient to exit 1's attention...
    cons = _gradients(egt_model, x, y, variables, consistency_only=True)
    assert max(np.abs(g).max() for g in cons) > 0
    for a, b, c in zip(g_egt, g_base, cons):
        np.testing.assert_allclose(a, b + c, rtol=1e-4, atol=1e-7)
    # ...and with λ = 0 the training gradient is exactly that of plain cross-entropy
    # on the logits, with nothing from `model.losses`.
    plain = _gradients(base, x, y, _attention_vars(base, 0), plain_ce=True)
    for a, b in zip(g_base, plain):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
    assert max(np.abs(a - b).max() for a, b in zip(g_egt, plain)) > 0


@pytest.mark.parametrize("stop_gradient_target", [True, False])
def test_final_map_stop_gradient_option(stop_gradient_target):
    x, y = blob_task(8)
    model = _tiny(consistency_weight=1.0, stop_gradient_target=stop_gradient_target)
    grads = _gradients(model, x, y, _attention_vars(model, 4), consistency_only=True)
    largest = max(0.0 if g is None else float(np.abs(g).max()) for g in grads)
    if stop_gradient_target:
        assert largest == 0.0
    else:
        assert largest > 0.0


def test_fit_learns_every_exit_in_inference_mode():
    x, y = blob_task(384, seed=0)
    x_val, y_val = blob_task(192, seed=1)
    model = _tiny(consistency_weight=0.3)
    model.compile(keras.optimizers.Adam(3e-3), metrics=["accuracy"])
    history = model.fit(
        x, y, validation_data=(x_val, y_val), epochs=8, batch_size=32, verbose=0,
        callbacks=[egt.callbacks.StepDecay(every=4, factor=0.5)],
    )
    keys = set(history.history)
    for name in ["loss", "consistency_loss", "consistency", "val_consistency"]:
        assert name in keys
    for k in range(1, 6):
        assert f"exit_{k}_accuracy" in keys and f"val_exit_{k}_accuracy" in keys
    # Inference mode (moving batch-norm statistics), held-out data, chance is 1/3.
    logits = model.predict(x_val, verbose=0)
    accuracies = [float((l.argmax(-1) == y_val).mean()) for l in logits]
    assert min(accuracies) >= 0.9, accuracies
    scores = model.evaluate(x_val, y_val, batch_size=len(x_val), return_dict=True, verbose=0)
    np.testing.assert_allclose(
        [scores[f"exit_{k + 1}_accuracy"] for k in range(model.num_exits)], accuracies, atol=1e-6
    )
    # One batch: the tracked consistency is the numpy cosine of the inference-mode maps.
    maps = [_np(m) for m in model.attention_maps(x_val)]
    per_exit = [ref.consistency(m, maps[-1]).mean() for m in maps[:-1]]
    for k, value in enumerate(per_exit):
        assert scores[f"exit_{k + 1}_consistency"] == pytest.approx(value, abs=1e-4)
    assert scores["consistency"] == pytest.approx(np.mean(per_exit), abs=1e-4)
    assert scores["consistency_loss"] == pytest.approx(1 - np.mean(per_exit), abs=1e-4)


def test_batchnorm_momentum_default_tracks_statistics():
    x, y = blob_task(64)
    model = _tiny()
    model.compile("adam")
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)  # 4 steps
    bn = model.blocks[0].bn
    assert bn.momentum == pytest.approx(0.9)
    variance = _np(bn.moving_variance)
    # After 4 steps at momentum 0.9 the initial 1.0 keeps weight 0.9**4 = 0.66; at
    # Keras' default 0.99 it would keep 0.96.
    conv_out = _np(model.blocks[0].conv(x))
    batch_var = conv_out.reshape(-1, conv_out.shape[-1]).var(0)
    assert np.abs(variance - 1.0).max() > 0.2 * np.abs(batch_var - 1.0).max()


def test_plain_labels_pydataset_and_tf_data():
    x, y = blob_task(64)

    class Data(keras.utils.PyDataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return x[i * 16 : (i + 1) * 16], y[i * 16 : (i + 1) * 16]

    import tensorflow as tf  # tf.data feeds every backend

    start = _tiny().get_weights()

    def fit_one_epoch(data, **kwargs):
        # Same initial weights, same batches in the same order: the same step.
        model = _tiny()
        model.set_weights(start)
        model.compile(keras.optimizers.Adam(1e-3), metrics=["accuracy"])
        history = model.fit(data, epochs=1, verbose=0, **kwargs)
        return history.history, [_np(w) for w in model.weights]

    expected, weights = fit_one_epoch(x, y=y, batch_size=16, shuffle=False)
    # shuffle=False: fit would otherwise shuffle a PyDataset's batch order.
    for data, kwargs in ((Data(), {"shuffle": False}),
                         (tf.data.Dataset.from_tensor_slices((x, y)).batch(16), {})):
        history, got = fit_one_epoch(data, **kwargs)
        assert np.isfinite(history["loss"][0])
        for key, value in expected.items():
            assert history[key][0] == pytest.approx(value[0], rel=1e-4, abs=1e-6), key
        for a, b in zip(got, weights):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_save_load_round_trip(tmp_path):
    x, y = blob_task(32)
    model = _tiny(exit_weights=(1, 1, 1, 1, 2), stop_gradient_target=False)
    model.compile("adam", metrics=["accuracy"])
    model.fit(x, y, epochs=1, verbose=0)
    loaded = run_model_saving_test(model, x, tmp_path)
    assert isinstance(loaded, egt.EarlyExitCNN)
    # The compile state comes back too: training can go on.
    loaded.fit(x, y, epochs=1, verbose=0)
    clone = egt.EarlyExitCNN.from_config(model.get_config())
    assert clone.widths == TINY and clone.exit_weights == (1, 1, 1, 1, 2)


def test_build_again_from_its_build_config_keeps_the_weights():
    model = egt.EarlyExitCNN(3, (32, 32, 2), widths=(4, 8, 8, 8, 8))
    before = [keras.ops.convert_to_numpy(w) for w in model.weights]
    model.build_from_config(model.get_build_config())
    assert len(model.weights) == len(before)
    for w, b in zip(model.weights, before):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(w), b)


def test_width_presets():
    assert egt.EarlyExitCNN(9, (64, 64, 2)).widths == (64, 128, 256, 512, 512)
    model = egt.EarlyExitCNN(9, (64, 64, 2), widths="micro")
    assert model.get_config()["widths"] == "micro"
    with pytest.raises(ValueError, match="preset"):
        egt.EarlyExitCNN(9, (64, 64, 2), widths="huge")
    with pytest.raises(ValueError, match="5 positive"):
        egt.EarlyExitCNN(9, (64, 64, 2), widths=(8, 8))


_PARITY_SCRIPT = """
import json, sys, numpy as np, keras, keras_egt as egt
spec = json.load(open(sys.argv[1]))
model = egt.EarlyExitCNN(3, (32, 32, 2), widths=tuple(spec["widths"]))
model.load_weights(spec["weights"])
x = np.load(spec["inputs"])
expected = np.load(spec["outputs"])
got = np.stack([keras.ops.convert_to_numpy(l) for l in model(x)])
print(json.dumps({"backend": keras.backend.backend(), "max_diff": float(np.abs(got - expected).max())}))
"""


@pytest.mark.slow
def test_weights_load_on_other_backends(tmp_path):
    x, y = blob_task(64)
    model = _tiny()
    model.compile("adam")
    model.fit(x, y, epochs=1, verbose=0)
    spec = {
        "widths": TINY,
        "weights": str(tmp_path / "w.weights.h5"),
        "inputs": str(tmp_path / "x.npy"),
        "outputs": str(tmp_path / "y.npy"),
    }
    model.save_weights(spec["weights"])
    np.save(spec["inputs"], x[:8])
    np.save(spec["outputs"], np.stack([_np(l) for l in model(x[:8])]))
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    (tmp_path / "check.py").write_text(_PARITY_SCRIPT)
    # Each pass loads on the next backend in the cycle, so over the three passes
    # every backend is both the source and the target once.
    cycle = ["tensorflow", "jax", "torch"]
    for other in [cycle[(cycle.index(BACKEND) + 1) % 3]]:
        env = dict(os.environ, KERAS_BACKEND=other)
        out = subprocess.run(
            [sys.executable, str(tmp_path / "check.py"), str(tmp_path / "spec.json")],
            env=env, capture_output=True, text=True, timeout=300,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        result = json.loads(out.stdout.strip().splitlines()[-1])
        assert result["backend"] == other
        assert result["max_diff"] <= 1e-4


class TestBadInput:
    def test_constructor(self):
        with pytest.raises(ValueError, match="too small"):
            egt.EarlyExitCNN(9, (16, 64, 2))
        with pytest.raises(ValueError, match=r"\(height, width, channels\)"):
            egt.EarlyExitCNN(9, (64, 64))
        with pytest.raises(ValueError, match="λ"):
            egt.EarlyExitCNN(9, (64, 64, 2), consistency_weight=-0.1)

    @pytest.mark.parametrize(
        "x_fn, y_fn, message",
        [
            (lambda x: x[0], lambda y: y, "rank 4"),
            (lambda x: x[..., :1], lambda y: y, "built for"),
            (lambda x: x[:, :16, :16], lambda y: y, "built for"),
            # Large enough, but not the size the heads were built for.
            (lambda x: np.pad(x, ((0, 0), (8, 8), (8, 8), (0, 0))), lambda y: y, "built for"),
            (lambda x: np.where(np.arange(x.size).reshape(x.shape) == 5, np.nan, x), lambda y: y, "non-finite"),
            (lambda x: x, lambda y: y + 1, r"0\.\.2"),
            (lambda x: x, lambda y: -y, r"0\.\.2"),
            (lambda x: x, lambda y: y[:-1], "labels"),
            (lambda x: x, lambda y: np.eye(3)[y], "one-hot"),
        ],
    )
    def test_fit_rejects_before_any_step(self, x_fn, y_fn, message):
        x, y = blob_task(24)
        model = _tiny()
        model.compile("adam")
        with pytest.raises(ValueError, match=message):
            model.fit(x_fn(x), y_fn(y), epochs=1, verbose=0)
        assert int(_np(model.optimizer.iterations)) == 0

    def test_validation_data_checked(self):
        x, y = blob_task(24)
        model = _tiny()
        model.compile("adam")
        with pytest.raises(ValueError, match="validation_data"):
            model.fit(x, y, validation_data=(x, y + 3), epochs=1, verbose=0)

    def test_call_with_wrong_rank(self):
        with pytest.raises(ValueError, match="batch axis"):
            _tiny()(np.zeros((32, 32, 2), "float32"))
        with pytest.raises(ValueError, match=r"input_shape\), got \(1, 48, 48, 2\)"):
            _tiny()(np.zeros((1, 48, 48, 2), "float32"))


@pytest.mark.parametrize("build", [
    lambda: egt.EarlyExitCNN(3, (32, 32, 2), widths=(4, 8, 8, 8, 8), batchnorm_momentum=0.8),
    lambda: egt.EarlyExitMCU(3, (32, 32, 2), stages="c4p | c8p | c8p", batchnorm_momentum=0.8),
], ids=["cnn", "mcu"])
def test_a_model_saved_with_the_old_momentum_name_loads(build, tmp_path):
    # Files saved before the argument was renamed spell it batch_norm_momentum.
    import zipfile

    x, _ = blob_task(4)
    model = build()
    expected = [keras.ops.convert_to_numpy(t) for t in model(x)]
    model.save(tmp_path / "new.keras")
    old = tmp_path / "old.keras"
    with zipfile.ZipFile(tmp_path / "new.keras") as source, zipfile.ZipFile(old, "w") as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename == "config.json":
                assert b'"batchnorm_momentum"' in data
                data = data.replace(b'"batchnorm_momentum"', b'"batch_norm_momentum"')
            target.writestr(item, data)
    loaded = keras.saving.load_model(old)
    assert loaded.batchnorm_momentum == 0.8
    for a, b in zip(loaded(x), expected):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(a), b, rtol=1e-5, atol=1e-6)
