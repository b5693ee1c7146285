"""`EarlyExitCNN`: the paper's five-block CNN as a preset of `EarlyExitModel`."""

import keras

from keras_egt import layers as egt_layers
from keras_egt.checks import check_int, check_number
from keras_egt.model import EarlyExitModel

WIDTH_PRESETS = {
    # The paper's backbone.
    "paper": (64, 128, 256, 512, 512),
    # Fits a Cortex-M4F-class part (nRF52840: 1 MB flash, 256 KB SRAM) as five
    # int8 segments: ~70 KiB of weights, the largest TFLM arena well under 64 KiB.
    "micro": (8, 16, 32, 64, 64),
}
NUM_BLOCKS = 5
MIN_SPATIAL_SIZE = 32


def resolve_widths(widths):
    """Turns a preset name, a tuple or a "8,16,32,64,64" string into five channel widths.

    Args:
        widths: `"paper"`, `"micro"`, 5 comma-separated ints, or a sequence of 5
            positive whole numbers.

    Returns:
        A tuple of 5 ints.

    Example:
    >>> resolve_widths("micro")
    (8, 16, 32, 64, 64)
    >>> resolve_widths("4,8,8,16,16")
    (4, 8, 8, 16, 16)
    """
    if isinstance(widths, str):
        if widths in WIDTH_PRESETS:
            return WIDTH_PRESETS[widths]
        if "," not in widths:
            raise ValueError(
                f"Unknown widths preset {widths!r}; use one of {sorted(WIDTH_PRESETS)} "
                "or 5 comma-separated channel counts such as '8,16,32,64,64'."
            )
        widths = [w.strip() for w in widths.split(",")]
    try:
        widths = list(widths)
    except TypeError:
        raise ValueError(
            f"widths must be 5 positive channel counts (one per block), got {widths!r}."
        ) from None
    values = []
    for w in widths:
        if isinstance(w, str):
            try:
                w = float(w)
            except ValueError:
                raise ValueError(f"widths must be whole numbers, got {w!r}.") from None
        values.append(check_int(w, "widths", minimum=1))
    if len(values) != NUM_BLOCKS:
        raise ValueError(
            f"widths must be 5 positive channel counts (one per block), got {len(values)}: "
            f"{tuple(values)}."
        )
    return tuple(values)


def cnn_backbone(input_shape, widths="paper", batchnorm_momentum=egt_layers.BATCH_NORM_MOMENTUM,
                 dtype=None):
    """The paper's backbone: five `ConvBlock`s named `block_1` ... `block_5`.

    Args:
        input_shape: `(height, width, channels)`, height and width >= 32.
        widths: as `resolve_widths`.
        batchnorm_momentum: momentum of the blocks' moving statistics.
        dtype: the blocks' dtype policy.

    Returns:
        A Functional `keras.Model`; blocks 1-4 end with 2x2 max pooling.

    Example:
    >>> backbone = cnn_backbone((64, 64, 2), "micro")
    """
    input_shape = tuple(input_shape)
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (height, width, channels), got {input_shape}.")
    if any(int(d) != d for d in input_shape) or min(input_shape[:2]) < MIN_SPATIAL_SIZE or (
        input_shape[2] < 1
    ):
        raise ValueError(
            f"input_shape {input_shape} is too small or not whole numbers: height and "
            f"width must be >= {MIN_SPATIAL_SIZE} (four 2x2 poolings) and channels >= 1. "
            "Resize or pad the inputs."
        )
    inputs = keras.Input(tuple(int(d) for d in input_shape), name="image")
    x = inputs
    for k, width in enumerate(resolve_widths(widths)):
        x = egt_layers.ConvBlock(
            width, pool=k < NUM_BLOCKS - 1, batchnorm_momentum=batchnorm_momentum,
            dtype=dtype, name=f"block_{k + 1}",
        )(x)
    return keras.Model(inputs, x, name="egt_cnn_backbone")


@keras.saving.register_keras_serializable(package="keras_egt")
class EarlyExitCNN(EarlyExitModel):
    """The paper's five-block CNN with an attention exit after every block, trained with EGT.

    Block k is a 3x3 conv, batch norm and ReLU, followed by 2x2 max pooling for
    blocks 1-4, so the final exit's attention map is input/16 (4x4 at 64x64). An
    `EarlyExitModel` on `cnn_backbone` with exits after `block_1` ... `block_5`.

    Args:
        num_classes: number of classes.
        input_shape: `(height, width, channels)`, height and width >= 32.
        widths: `"paper"` (64, 128, 256, 512, 512), `"micro"` or 5 ints.
        consistency_weight: λ >= 0, or one λ per early exit (4).
        exit_weights: 5 per-exit classification-loss weights (default 1 each).
        stop_gradient_target: whether the final map is a fixed target of the
            consistency loss.
        batchnorm_momentum: momentum of the blocks' moving statistics.
        attention_hidden_channels: hidden width of every attention module
            (`None`: `max(8, C // 8)`).
        consistency_target: `"final"` or `"next"` (see `EarlyExitModel`).
        consistency_loss: `"cosine"` or `"attention_transfer"` (see `EarlyExitModel`).
        **kwargs: `keras.Model` arguments (`name`, `dtype`).

    Example:
    >>> model = EarlyExitCNN(num_classes=9, input_shape=(64, 64, 2), consistency_weight=0.3)
    >>> model.compile(optimizer="adam", metrics=["accuracy"])
    >>> model.fit(x_train, y_train, epochs=50)
    >>> logits = model(x)                    # five (batch, 9) tensors
    """

    def __init__(
        self,
        num_classes,
        input_shape,
        widths="paper",
        consistency_weight=0.3,
        exit_weights=None,
        stop_gradient_target=True,
        batchnorm_momentum=egt_layers.BATCH_NORM_MOMENTUM,
        attention_hidden_channels=None,
        consistency_target="final",
        consistency_loss="cosine",
        **kwargs,
    ):
        momentum = check_number(batchnorm_momentum, "batchnorm_momentum", 0, 1,
                                include_maximum=False)
        self.widths = resolve_widths(widths)
        backbone = cnn_backbone(input_shape, self.widths, momentum, dtype=kwargs.get("dtype"))
        super().__init__(
            backbone,
            [f"block_{k + 1}" for k in range(NUM_BLOCKS)],
            num_classes,
            consistency_weight=consistency_weight,
            exit_weights=exit_weights,
            stop_gradient_target=stop_gradient_target,
            attention_hidden_channels=attention_hidden_channels,
            consistency_target=consistency_target,
            consistency_loss=consistency_loss,
            **kwargs,
        )
        self._widths_arg = widths if isinstance(widths, str) and widths in WIDTH_PRESETS else (
            self.widths
        )
        self.batchnorm_momentum = momentum

    @property
    def blocks(self):
        """The five `ConvBlock`s, first to last (stage k is block k)."""
        return [self.backbone.get_layer(f"block_{k + 1}") for k in range(NUM_BLOCKS)]

    def get_config(self):
        config = super().get_config()
        for key in ("backbone", "exit_layers", "head_grid"):
            config.pop(key)
        config.update(
            input_shape=self.image_shape,
            widths=self._widths_arg,
            batchnorm_momentum=self.batchnorm_momentum,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = egt_layers.upgrade_config(config)
        if isinstance(config.get("widths"), list):
            config["widths"] = tuple(config["widths"])
        return cls(**config)
