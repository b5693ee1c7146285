"""The segments of an early-exit model as Keras models, and the float data they see.

Segment k runs stage k and exit head k of the trained model itself (its own layer
objects, so its own weights, in inference mode) and returns exit k's softmax
probabilities and, for k < K, the feature map that segment k+1 takes as input.
"""

import keras
import numpy as np
from keras import ops


def check_model(model):
    """Raises a clear error unless `model` is a built `EarlyExitModel`-like model."""
    needed = ("stages", "heads", "image_shape", "num_classes", "num_exits")
    missing = [name for name in needed if not hasattr(model, name)]
    if missing or len(model.stages) != model.num_exits or len(model.heads) != model.num_exits:
        raise TypeError(
            f"Expected a keras_egt.EarlyExitModel (stages and exit heads), got "
            f"{type(model).__name__}{' without ' + ', '.join(missing) if missing else ''}. "
            "Load a saved model with keras.saving.load_model('model.keras')."
        )
    return model


def segment_shapes(model):
    """Input shapes (without batch) of the K segments: the image, then stage outputs."""
    return [tuple(model.image_shape)] + list(model.feature_shapes[:-1])


@keras.saving.register_keras_serializable(package="keras_egt")
class Segment(keras.Model):
    """Stage k then exit head k of a trained model; outputs `(probabilities, features)`.

    The last segment outputs the probabilities only. Not meant for training: the
    stage always runs in inference mode (batch norm uses its moving statistics).

    Args:
        stage: the model's stage k (a layer or Functional model).
        head: the model's `ExitHead` k.
        with_features: whether to output the stage's feature map too.

    Call arguments:
        inputs: the stage's input feature map `(batch, H, W, C)`.
    """

    def __init__(self, stage, head, with_features, **kwargs):
        super().__init__(**kwargs)
        self.stage = stage
        self.head = head
        self.with_features = bool(with_features)

    def call(self, inputs):
        features = self.stage(inputs, training=False)
        probabilities = ops.softmax(ops.cast(self.head(features), "float32"), axis=-1)
        if self.with_features:
            return probabilities, features
        return probabilities

    def get_config(self):
        config = super().get_config()
        config.update(
            stage=keras.saving.serialize_keras_object(self.stage),
            head=keras.saving.serialize_keras_object(self.head),
            with_features=self.with_features,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["stage"] = keras.saving.deserialize_keras_object(config["stage"])
        config["head"] = keras.saving.deserialize_keras_object(config["head"])
        return cls(**config)


def build_segments(model):
    """The K `Segment` models of `model`, sharing its layers and weights.

    Args:
        model: a trained `EarlyExitModel`.

    Returns:
        A list of K built `Segment` models; segment k takes `segment_shapes(model)[k]`.

    Example:
    >>> probabilities, features = build_segments(model)[0](x[:1])
    """
    check_model(model)
    segments = []
    for k, shape in enumerate(segment_shapes(model)):
        segment = Segment(
            model.stages[k], model.heads[k], with_features=k < model.num_exits - 1,
            name=f"segment_{k + 1}",
        )
        segment(np.zeros((1,) + shape, "float32"))  # builds it (export needs a built model)
        segments.append(segment)
    return segments


def segment_inputs(model, x, batch_size=64):
    """The float input of every segment: `x`, then the features leaving stages 1..K-1.

    This is the calibration data of the int8 export: segment k is calibrated on
    what the float model feeds it.

    Args:
        model: a trained `EarlyExitModel` (any backend).
        x: float inputs `(n, H, W, C)`.
        batch_size: samples per forward pass.

    Returns:
        A list of K float32 numpy arrays, the k-th of shape `(n,) + segment_shapes[k]`.
    """
    check_model(model)
    x = np.asarray(x, np.float32)
    outputs = [[] for _ in range(model.num_exits)]
    for start in range(0, len(x), batch_size):
        h = ops.convert_to_tensor(x[start : start + batch_size])
        outputs[0].append(x[start : start + batch_size])
        for k, stage in enumerate(model.stages[:-1]):
            h = stage(h, training=False)
            outputs[k + 1].append(np.asarray(ops.convert_to_numpy(h), np.float32))
    return [np.concatenate(parts, axis=0) for parts in outputs]
