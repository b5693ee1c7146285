"""The test kit: shared helpers, in the spirit of keras-hub's `keras_hub/src/tests/test_case.py`.

Not a test module (pytest collects `test_*.py` only). `blob_task` is the small data
set every exit can learn; `run_layer_test` checks a layer the way Keras itself does (config round trip,
build, symbolic call, eager call, one compiled training step);
`run_serialization_test` and `run_model_saving_test` check the config and `.keras`
round trips; `tiny_cnn` is the one tiny early-exit model the test files share.
Plain functions rather than a `TestCase` class, so pytest fixtures keep working.
"""

import json

import keras
import numpy as np
from keras import ops, tree

import keras_egt as egt

BACKEND = keras.backend.backend()


def blob_task(n=192, size=32, channels=2, num_classes=3, seed=0):
    """A small separable problem for every exit: a square at a random place whose
    sign and channel give the class (class c lights channel c % channels, with
    sign + for c < channels, else -), on Gaussian noise."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % num_classes
    rng.shuffle(y)
    x = (0.5 * rng.normal(size=(n, size, size, channels))).astype("float32")
    side = size // 2
    for i, label in enumerate(y):
        r, c = rng.integers(0, size - side, size=2)
        sign = 2.0 if label < channels else -2.0
        x[i, r : r + side, c : c + side, label % channels] += sign
    return x, y.astype("int32")


# Tiny widths: every test model is seconds to train on two CPU cores.
TINY = (8, 8, 8, 8, 8)
SMALL = (4, 8, 8, 8, 8)


def to_numpy(x):
    """Any backend tensor (or a nest of them) as numpy."""
    return tree.map_structure(ops.convert_to_numpy, x)


def tiny_cnn(num_classes=3, input_shape=(32, 32, 2), widths=TINY, consistency_weight=0.3,
             **kwargs):
    """The paper preset at tiny widths, the model most tests run on."""
    return egt.EarlyExitCNN(num_classes, input_shape, widths=widths,
                            consistency_weight=consistency_weight, **kwargs)


def run_serialization_test(instance):
    """`get_config`/`from_config` and `serialize`/`deserialize` are idempotent.

    Returns the revived instance (from `deserialize_keras_object`).
    """
    config = instance.get_config()
    config_json = json.dumps(config, sort_keys=True, default=str)
    revived = instance.__class__.from_config(config)
    assert json.dumps(revived.get_config(), sort_keys=True, default=str) == config_json
    serialized = json.loads(json.dumps(keras.saving.serialize_keras_object(instance)))
    revived = keras.saving.deserialize_keras_object(serialized)
    assert type(revived) is type(instance)
    assert json.dumps(revived.get_config(), sort_keys=True, default=str) == config_json
    return revived


def run_layer_test(cls, init_kwargs, input_data, expected_output_shape,
                   expected_num_trainable_weights=0, expected_num_non_trainable_weights=0,
                   call_kwargs=None, run_training_check=True):
    """Basic checks of a layer, after keras-hub's `TestCase.run_layer_test`.

    Args:
        cls: the layer class.
        init_kwargs: its constructor arguments.
        input_data: a numpy input batch.
        expected_output_shape: the output shape (a nest of tuples for several outputs).
        expected_num_trainable_weights: trainable weights once built.
        expected_num_non_trainable_weights: non-trainable weights once built.
        call_kwargs: extra arguments of `call`.
        run_training_check: also fit one compiled step (mse on its own outputs).

    Returns:
        `(layer, outputs)` of the eager call, for numerical checks by the caller.
    """
    call_kwargs = dict(call_kwargs or {})
    run_serialization_test(cls(**init_kwargs))

    def check_built(layer):
        assert layer.built
        assert len(layer.trainable_weights) == expected_num_trainable_weights
        assert len(layer.non_trainable_weights) == expected_num_non_trainable_weights

    def check_output(layer, output):
        shapes = tree.map_structure(lambda t: tuple(t.shape), output)
        assert shapes == expected_output_shape, (shapes, expected_output_shape)
        for tensor in tree.flatten(output):
            assert keras.backend.standardize_dtype(tensor.dtype) == layer.compute_dtype

    layer = cls(**init_kwargs)
    layer.build(input_data.shape)
    check_built(layer)

    layer = cls(**init_kwargs)
    symbolic = layer(keras.KerasTensor(input_data.shape, input_data.dtype), **call_kwargs)
    check_built(layer)
    check_output(layer, symbolic)

    layer = cls(**init_kwargs)
    output = layer(input_data, **call_kwargs)
    check_built(layer)
    check_output(layer, output)
    # Serialised after being built, the layer's config still round-trips and a
    # clone given its weights computes the same outputs.
    clone = run_serialization_test(layer)
    clone(input_data, **call_kwargs)
    clone.set_weights(layer.get_weights())
    for a, b in zip(tree.flatten(to_numpy(output)),
                    tree.flatten(to_numpy(clone(input_data, **call_kwargs)))):
        np.testing.assert_allclose(a, b, atol=1e-6)

    if run_training_check:
        class Wrapper(keras.Model):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def call(self, x, training=None):
                out = self.inner(x, **call_kwargs)
                return tree.flatten(out)[0]

        target = tree.flatten(to_numpy(output))[0]
        model = Wrapper(cls(**init_kwargs))
        model.compile(optimizer="sgd", loss="mse",
                      jit_compile=keras.backend.backend() != "torch")
        history = model.fit(input_data, np.zeros_like(target) + 0.5, epochs=1, verbose=0)
        assert np.isfinite(history.history["loss"][0])
    return layer, output


def run_model_saving_test(model, input_data, path):
    """A `.keras` round trip keeps the class, the config and the outputs exactly.

    Args:
        model: a built model.
        input_data: a numpy batch.
        path: a `pathlib.Path` folder to save into.

    Returns:
        The loaded model.
    """
    file = str(path / "model.keras")
    model.save(file)
    loaded = keras.saving.load_model(file)
    assert type(loaded) is type(model)
    assert loaded.get_config() == model.get_config()
    for a, b in zip(tree.flatten(to_numpy(model(input_data))),
                    tree.flatten(to_numpy(loaded(input_data)))):
        np.testing.assert_array_equal(a, b)
    return loaded
