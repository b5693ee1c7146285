"""Layers of the early-exit CNN: conv blocks, spatial attention and exit heads."""

import keras
from keras import ops

# PyTorch's BatchNorm momentum 0.1 written the Keras way. Keras' default 0.99
# leaves the moving variance near its initial 1.0 for hundreds of steps, so a
# short run on ~1.4k samples predicts at chance in inference mode.
BATCH_NORM_MOMENTUM = 0.9


def upgrade_config(config):
    """A layer or model config saved before `batch_norm_momentum` became `batchnorm_momentum`.

    Returns:
        A copy of `config` that today's constructors take.

    Example:
    >>> upgrade_config({"batch_norm_momentum": 0.9})
    {'batchnorm_momentum': 0.9}
    """
    config = dict(config)
    if "batch_norm_momentum" in config:
        config["batchnorm_momentum"] = config.pop("batch_norm_momentum")
    return config


def spatial_softmax(scores):
    """Normalises attention scores into a map that sums to 1 over H x W.

    Args:
        scores: tensor of shape `(batch, H, W, 1)`.

    Returns:
        A tensor of the same shape with values in [0, 1] and
        `sum over H, W == 1` for every sample.

    Example:
    >>> a = spatial_softmax(np.zeros((1, 2, 2, 1), "float32"))  # every pixel 0.25
    """
    shape = ops.shape(scores)
    flat = ops.reshape(scores, (shape[0], -1))
    return ops.reshape(ops.softmax(flat, axis=-1), shape)


@keras.saving.register_keras_serializable(package="keras_egt")
class ConvBlock(keras.layers.Layer):
    """One backbone block: 3x3 conv, batch norm, ReLU and (optionally) 2x2 max pooling.

    Args:
        filters: number of output channels.
        pool: whether to end with 2x2 max pooling (stride 2).
        batchnorm_momentum: momentum of the moving statistics.
        **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`).

    Call arguments:
        inputs: features `(batch, H, W, C_in)`.
        training: whether batch norm uses the batch's statistics (and updates its
            moving ones) or the moving statistics.

    Returns (from `call`):
        `(batch, H, W, filters)`, or `(batch, H // 2, W // 2, filters)` with `pool`.

    Example:
    >>> block = ConvBlock(64)
    >>> block(np.zeros((1, 64, 64, 2), "float32")).shape
    (1, 32, 32, 64)
    """

    def __init__(self, filters, pool=True, batchnorm_momentum=BATCH_NORM_MOMENTUM, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.pool = bool(pool)
        self.batchnorm_momentum = float(batchnorm_momentum)
        # No conv bias: batch norm's beta plays that role (and folds away at export).
        self.conv = keras.layers.Conv2D(
            self.filters, 3, padding="same", use_bias=False, dtype=self.dtype_policy, name="conv"
        )
        self.bn = keras.layers.BatchNormalization(
            momentum=self.batchnorm_momentum, dtype=self.dtype_policy, name="bn"
        )
        self.pooling = (
            keras.layers.MaxPooling2D(2, dtype=self.dtype_policy, name="pool") if self.pool else None
        )

    def build(self, input_shape):
        self.conv.build(input_shape)
        out_shape = tuple(input_shape[:-1]) + (self.filters,)
        self.bn.build(out_shape)
        self.built = True

    def call(self, inputs, training=None):
        x = ops.relu(self.bn(self.conv(inputs), training=training))
        return self.pooling(x) if self.pooling is not None else x

    def compute_output_shape(self, input_shape):
        b, h, w, _ = input_shape
        if self.pool:
            h = None if h is None else h // 2
            w = None if w is None else w // 2
        return (b, h, w, self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters, pool=self.pool, batchnorm_momentum=self.batchnorm_momentum
        )
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**upgrade_config(config))


@keras.saving.register_keras_serializable(package="keras_egt")
class SpatialAttention(keras.layers.Layer):
    """Spatial attention scores of a feature map, with the map and the gate made from them.

    For features `F` of shape `(H, W, C)` the module computes per-pixel scores

        s = conv3x3_{h -> 1}( relu( conv1x1_{C -> h}(F) ) )

    with `h = hidden_channels`, and from them two views:

    - the **attention map** `A = softmax over H*W of s`: values in [0, 1] that sum to 1,
      shape `(H, W, 1)`. This is the explanation and what the consistency loss and
      metric compare. A spatial softmax, not a sigmoid: two nearly flat sigmoid maps
      have a cosine near 1 whatever they show, so a sigmoid map makes the consistency
      metric meaningless (measured: 0.987 for maps of *different* samples).
    - the **gate** `g = sigmoid(s)`, used by `ExitHead` to weight features before
      pooling (CBAM-style). It ranks pixels exactly as `A` does. The head pools with
      the gate rather than `A` because an int8 softmax over 1,024 positions underflows
      at TFLite's fixed 1/256 output scale, while a sigmoid gate quantises cleanly.

    `call` returns the scores `s`; use `spatial_softmax(s)` and `ops.sigmoid(s)`.

    Args:
        hidden_channels: channels of the hidden 1x1 conv. `None` picks
            `max(8, C // 8)` when built.
        **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`).

    Call arguments:
        features: a feature map `(batch, H, W, C)`.

    Returns (from `call`):
        The scores `s`, `(batch, H, W, 1)`.

    Example:
    >>> att = SpatialAttention()
    >>> s = att(np.zeros((2, 8, 8, 16), "float32"))   # (2, 8, 8, 1)
    >>> maps = spatial_softmax(s)                     # each sums to 1
    """

    def __init__(self, hidden_channels=None, **kwargs):
        super().__init__(**kwargs)
        self.hidden_channels = None if hidden_channels is None else int(hidden_channels)

    def build(self, input_shape):
        channels = input_shape[-1]
        hidden = self.hidden_channels or max(8, channels // 8)
        self.reduce = keras.layers.Conv2D(hidden, 1, dtype=self.dtype_policy, name="reduce")
        # The scores feed a softmax over every position, so under mixed precision they
        # are computed in float32, as Keras keeps a model's softmax outputs (one
        # filter: the cost is nil). It also avoids PyTorch's CPU bfloat16 backward of
        # a one-filter 3x3 conv, which fails ("slow_conv2d: grad_weight must be
        # contiguous", torch 2.13).
        half = self.dtype_policy.compute_dtype in ("float16", "bfloat16")
        self.score = keras.layers.Conv2D(
            1, 3, padding="same", dtype="float32" if half else self.dtype_policy, name="score"
        )
        self.reduce.build(input_shape)
        self.score.build(tuple(input_shape[:-1]) + (hidden,))
        self.built = True

    def call(self, features):
        return self.score(ops.relu(self.reduce(features)))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (1,)

    def get_config(self):
        config = super().get_config()
        config.update(hidden_channels=self.hidden_channels)
        return config


@keras.saving.register_keras_serializable(package="keras_egt")
class ExitHead(keras.layers.Layer):
    """Exit classifier: spatial attention, attention-gated adaptive average pooling, dense.

    `logits = Dense( flatten( avg_pool_{p x p}( sigmoid(s) * F ) ) )`, where `s` are the
    `SpatialAttention` scores of the features `F` and the pooling window
    `p = max(1, H // grid)` (likewise along W) leaves a grid of about `grid x grid`
    cells: adaptive average pooling. A global average (grid 1) throws away
    *where* a feature fired; an early exit, whose receptive field is a few pixels,
    then cannot tell a push from a pull (a Doppler burst above vs below zero
    velocity) or one time order from the other. Measured on the radar set with
    global pooling: exits 1-3 at 13%, 19%, 44% while exits 4-5 reached 97-99%.

    Args:
        num_classes: number of classes.
        hidden_channels: passed to `SpatialAttention`.
        grid: cells per side of the pooled grid (maps smaller than that keep
            their size).
        **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`).

    Call arguments:
        features: a feature map `(batch, H, W, C)` of known H and W.
        return_attention: also return the spatial attention map.

    Returns (from `call`):
        The logits `(batch, num_classes)`, or `(logits, attention_map)` when
        `return_attention=True`.

    Example:
    >>> head = ExitHead(9)
    >>> logits, attention = head(np.zeros((2, 8, 8, 16), "float32"), return_attention=True)
    """

    def __init__(self, num_classes, hidden_channels=None, grid=4, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.hidden_channels = None if hidden_channels is None else int(hidden_channels)
        self.grid = int(grid)
        if self.grid < 1:
            raise ValueError(f"grid must be >= 1, got {grid}.")
        self.attention = SpatialAttention(
            hidden_channels, dtype=self.dtype_policy, name="attention"
        )
        self.classifier = keras.layers.Dense(
            self.num_classes, dtype=self.dtype_policy, name="classifier"
        )

    def pool_size(self, input_shape):
        """The average-pooling window for features of `input_shape`."""
        return tuple(max(1, int(d) // self.grid) for d in input_shape[1:3])

    def build(self, input_shape):
        if input_shape[1] is None or input_shape[2] is None:
            raise ValueError("ExitHead needs a known height and width to size its pooling.")
        self.attention.build(input_shape)
        rows, cols = (int(d) // p for d, p in zip(input_shape[1:3], self.pool_size(input_shape)))
        self.classifier.build((input_shape[0], rows * cols * input_shape[-1]))
        self.built = True

    def call(self, features, return_attention=False):
        scores = self.attention(features)
        window = self.pool_size(features.shape)
        gate = ops.cast(ops.sigmoid(scores), features.dtype)  # float32 scores, see SpatialAttention
        pooled = ops.average_pool(gate * features, window, strides=window, padding="valid")
        logits = self.classifier(ops.reshape(pooled, (ops.shape(pooled)[0], -1)))
        if return_attention:
            return logits, spatial_softmax(scores)
        return logits

    def compute_output_spec(self, features, return_attention=False):
        # Lets the head be called on symbolic tensors (`keras.Input`) in a
        # Functional graph, with or without its attention map.
        logits = keras.KerasTensor((features.shape[0], self.num_classes), self.compute_dtype)
        if return_attention:
            half = self.compute_dtype in ("float16", "bfloat16")
            attention = keras.KerasTensor(tuple(features.shape[:-1]) + (1,),
                                          "float32" if half else self.compute_dtype)
            return logits, attention
        return logits

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes, hidden_channels=self.hidden_channels, grid=self.grid
        )
        return config
