"""The five segments of an early-exit CNN as Keras models, and the float data they see.

Segment k runs block k and exit head k of the trained model itself (its own layer
objects, so its own weights, in inference mode) and returns exit k's softmax
probabilities and, for k < 5, the feature map that segment k+1 takes as input.
"""

import keras
import numpy as np
from keras import ops

from keras_egt.model import NUM_EXITS


def check_model(model):
    """Raises a clear error unless `model` is a built `EarlyExitCNN`-like model."""
    needed = ("blocks", "heads", "image_shape", "num_classes", "widths")
    missing = [name for name in needed if not hasattr(model, name)]
    if missing or len(model.blocks) != NUM_EXITS or len(model.heads) != NUM_EXITS:
        raise TypeError(
            f"Expected a keras_egt.EarlyExitCNN (five blocks and five exit heads), got "
            f"{type(model).__name__}{' without ' + ', '.join(missing) if missing else ''}. "
            "Load a saved model with keras.saving.load_model('model.keras')."
        )
    return model


def segment_shapes(model):
    """Input shapes (without batch) of the five segments: the image, then block outputs."""
    shapes = [tuple(model.image_shape)]
    shape = (1,) + tuple(model.image_shape)
    for block in model.blocks[:-1]:
        shape = block.compute_output_shape(shape)
        shapes.append(tuple(int(d) for d in shape[1:]))
    return shapes


@keras.saving.register_keras_serializable(package="keras_egt")
class Segment(keras.Model):
    """Block k then exit head k of a trained model; outputs `(probabilities, features)`.

    The last segment outputs the probabilities only. Not meant for training: the
    block always runs in inference mode (batch norm uses its moving statistics).
    A subclassed model rather than a functional one: `ExitHead` cannot be called
    on symbolic Keras tensors (its `compute_output_shape` takes `return_attention`).

    Args:
        block: the model's `ConvBlock` k.
        head: the model's `ExitHead` k.
        with_features: whether to output the block's feature map too.
    """

    def __init__(self, block, head, with_features, **kwargs):
        super().__init__(**kwargs)
        self.block = block
        self.head = head
        self.with_features = bool(with_features)

    def call(self, inputs):
        features = self.block(inputs, training=False)
        probabilities = ops.softmax(self.head(features), axis=-1)
        if self.with_features:
            return probabilities, features
        return probabilities

    def get_config(self):
        config = super().get_config()
        config.update(
            block=keras.saving.serialize_keras_object(self.block),
            head=keras.saving.serialize_keras_object(self.head),
            with_features=self.with_features,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["block"] = keras.saving.deserialize_keras_object(config["block"])
        config["head"] = keras.saving.deserialize_keras_object(config["head"])
        return cls(**config)


def build_segments(model):
    """The five `Segment` models of `model`, sharing its layers and weights.

    Args:
        model: a trained `EarlyExitCNN`.

    Returns:
        A list of 5 built `Segment` models; segment k takes `segment_shapes(model)[k]`.

    Example:
    >>> probabilities, features = build_segments(model)[0](x[:1])
    """
    check_model(model)
    segments = []
    for k, shape in enumerate(segment_shapes(model)):
        segment = Segment(
            model.blocks[k], model.heads[k], with_features=k < NUM_EXITS - 1,
            name=f"segment_{k + 1}",
        )
        segment(np.zeros((1,) + shape, "float32"))  # builds it (export needs a built model)
        segments.append(segment)
    return segments


def segment_inputs(model, x, batch_size=64):
    """The float input of every segment: `x`, then the features leaving blocks 1-4.

    This is the calibration data of the int8 export: segment k is calibrated on
    what the float model feeds it.

    Args:
        model: a trained `EarlyExitCNN` (any backend).
        x: float inputs `(n, H, W, C)`.
        batch_size: samples per forward pass.

    Returns:
        A list of 5 float32 numpy arrays, the k-th of shape `(n,) + segment_shapes[k]`.
    """
    check_model(model)
    x = np.asarray(x, np.float32)
    outputs = [[] for _ in range(NUM_EXITS)]
    for start in range(0, len(x), batch_size):
        h = ops.convert_to_tensor(x[start : start + batch_size])
        outputs[0].append(x[start : start + batch_size])
        for k, block in enumerate(model.blocks[:-1]):
            h = block(h, training=False)
            outputs[k + 1].append(np.asarray(ops.convert_to_numpy(h), np.float32))
    return [np.concatenate(parts, axis=0) for parts in outputs]
