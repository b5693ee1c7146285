"""`EarlyExitMCU`: an early-exit network laid out for microcontrollers, as a preset family.

The paper's CNN spends its multiply-accumulates evenly over five full-resolution
blocks, so an early exit saves little and is weak (small receptive field). This
family turns that around: the first stage reaches a coarse map cheaply, and the wide
3x3 convs that only hard samples need come after the early exits. The `"mcu"`
preset, `c8p s16p s32p | c64 | c96 | c96p` (four exits), and why (built-in radar
set, test users unseen, λ = 0.3, float cascade at threshold 0.9, one seed; every run
in `benchmarks/results/mcu_design.jsonl`, made by `benchmarks/mcu_design.py`):

* **Max pooling, not strides.** Strided stems and strided depthwise blocks reached
  only 72-85% at the final exit (30 epochs): a stride-2 conv subsamples the thin
  micro-Doppler lines a 2x2 max pool keeps. Every downsampling here is a max pool.
* **Depthwise-separable blocks before exit 1.** Exit 1 after `c8p s16p s32p` sits at
  8x8 with a receptive field over most of the gesture: 93.0% accurate for 0.99 M MACs
  (9% of the model), where the paper layout's exit 1 (one conv at full resolution)
  reached 44% and exit 2 74% (micro widths). A full 3x3 conv in place of `s16p`
  lifts exit 1 to 94.9% but doubles its MACs (1.97 M): 2.90x instead of 3.54x.
* **Width late, at 8x8.** The two 96-channel 3x3 convs run at 8x8 before the last
  pool (`c96 | c96p`): 80% of the MACs are spent after exit 2, where only the ~13%
  hard samples go, and the final exit rose from 96.77% (the same convs at 4x4) to
  97.29% (50 epochs). Cascade: 4.85x fewer MACs at 97.21% (-0.07 point); oracle 8.8x.
* **Full 3x3 convs after exit 1.** Separable blocks there too (`s64 s64`) cost the
  final exit 3 points (93.6% vs 96.7%, 30 epochs).
* **Four exits.** Three (exit 2 after `c64 c96p`) left exit 2 too dear: 1.93x vs 2.72x.
* **Fits the board.** Int8: 222.1 KiB of flash for the four segments, largest TFLM
  arena 44.7 KiB (`keras_egt.budget` estimated 221.8 and 43.6 before training); on
  TFLM's interpreter the cascade takes 2.43x less batch-1 time than the same int8
  model run to its final exit (`benchmarks/mcu.py`).

A stage is a list of blocks written as short strings (`keras_egt.mcu_stages`):

| block | layers |
|---|---|
| `"c16"` | 3x3 conv with 16 filters (no bias), batch norm, ReLU |
| `"s16"` | depthwise-separable: 3x3 depthwise conv, batch norm, ReLU, 1x1 conv with 16 filters, batch norm, ReLU |
| trailing `"p"` (`"c16p"`, `"s16p"`) | then 2x2 max pooling |

All of them map to int8 TFLite builtins that TFLM and CMSIS-NN run (batch norm
folds into the conv, ReLU fuses into it).
"""

import keras

from keras_egt import layers as egt_layers
from keras_egt.budget import check_architecture
from keras_egt.checks import check_number
from keras_egt.mcu_stages import MCU_PRESETS, parse_block, resolve_stages
from keras_egt.model import EarlyExitModel

__all__ = ["MCU_PRESETS", "EarlyExitMCU", "mcu_backbone", "resolve_stages"]

def _pools(stages):
    return sum(block.endswith("p") for stage in stages for block in stage)


def mcu_backbone(input_shape, stages="mcu", batchnorm_momentum=egt_layers.BATCH_NORM_MOMENTUM,
                 dtype=None):
    """The backbone of `EarlyExitMCU`: stage k ends at a layer named `stage_k`.

    Args:
        input_shape: `(height, width, channels)`; height and width must survive the
            stages' 2x2 poolings (at least 1 pixel left).
        stages: as `resolve_stages`.
        batchnorm_momentum: momentum of the batch norms' moving statistics.
        dtype: the layers' dtype policy.

    Returns:
        A Functional `keras.Model`.

    Example:
    >>> backbone = mcu_backbone((64, 64, 2), "mcu")
    >>> backbone.get_layer("stage_1").output.shape
    (None, 8, 8, 32)
    """
    stages = resolve_stages(stages)
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or any(int(d) != d or d < 1 for d in input_shape):
        raise ValueError(
            f"input_shape must be (height, width, channels) of positive whole numbers, got "
            f"{input_shape}."
        )
    smallest = 2 ** _pools(stages)
    if min(input_shape[:2]) < smallest:
        raise ValueError(
            f"input_shape {input_shape} is too small for stages {stages}: their "
            f"{_pools(stages)} 2x2 poolings need height and width >= {smallest}. Resize "
            "the inputs or drop a 'p'."
        )
    check_architecture(stages, input_shape)  # before Keras allocates a single weight
    options = {"dtype": dtype}
    norm = {"momentum": batchnorm_momentum, **options}
    inputs = keras.Input(tuple(int(d) for d in input_shape), name="image")
    x = inputs
    for k, stage in enumerate(stages, start=1):
        for j, block in enumerate(stage, start=1):
            kind, filters, pool = parse_block(block)
            name = f"stage_{k}_block_{j}"
            last = j == len(stage)
            out_name = f"stage_{k}" if last and not pool else f"{name}_relu"
            if kind == "s":
                x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False,
                                                 name=f"{name}_dw", **options)(x)
                x = keras.layers.BatchNormalization(name=f"{name}_dw_bn", **norm)(x)
                x = keras.layers.ReLU(name=f"{name}_dw_relu", **options)(x)
                x = keras.layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_pw",
                                        **options)(x)
            else:
                # No conv bias: batch norm's beta plays that role (and folds away at export).
                x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False,
                                        name=f"{name}_conv", **options)(x)
            x = keras.layers.BatchNormalization(name=f"{name}_bn", **norm)(x)
            x = keras.layers.ReLU(name=out_name, **options)(x)
            if pool:
                x = keras.layers.MaxPooling2D(2, name=f"stage_{k}" if last else f"{name}_pool",
                                              **options)(x)
    return keras.Model(inputs, x, name="egt_mcu_backbone")


@keras.saving.register_keras_serializable(package="keras_egt")
class EarlyExitMCU(EarlyExitModel):
    """An early-exit network for microcontrollers: cheap, strong early exits, width late.

    An `EarlyExitModel` on `mcu_backbone` with an exit after every stage. The
    `"mcu"` preset (four exits) fits the paper's radar board class: on 64x64x2 inputs
    and 9 classes its int8 segments take 222 KiB of flash together and the largest
    needs 45 KiB of TFLM arena (`keras_egt.budget.estimate_deployment` tells before
    training; the export measures).

    Args:
        num_classes: number of classes.
        input_shape: `(height, width, channels)`.
        stages: a preset name (`"mcu"`), a block string or nested lists (see
            `resolve_stages`).
        consistency_weight: λ >= 0, or one λ per early exit.
        batchnorm_momentum: momentum of the batch norms' moving statistics.
        **kwargs: the other `EarlyExitModel` arguments (`exit_weights`,
            `attention_hidden_channels`, `head_grid`, `consistency_target`, ...) and
            `keras.Model` ones (`name`, `dtype`).

    Example:
    >>> model = EarlyExitMCU(num_classes=9, input_shape=(64, 64, 2))
    >>> model.compile(optimizer="adam", metrics=["accuracy"])
    >>> model.fit(x_train, y_train, epochs=50)
    >>> logits = model(x)                    # four (batch, 9) tensors
    """

    def __init__(self, num_classes, input_shape, stages="mcu", consistency_weight=0.3,
                 batchnorm_momentum=egt_layers.BATCH_NORM_MOMENTUM, **kwargs):
        momentum = check_number(batchnorm_momentum, "batchnorm_momentum", 0, 1,
                                include_maximum=False)
        self.stages_spec = resolve_stages(stages)
        backbone = mcu_backbone(input_shape, self.stages_spec, momentum,
                                dtype=kwargs.get("dtype"))
        super().__init__(backbone, [f"stage_{k + 1}" for k in range(len(self.stages_spec))],
                         num_classes, consistency_weight=consistency_weight, **kwargs)
        self._stages_arg = stages if isinstance(stages, str) and stages in MCU_PRESETS else (
            [list(stage) for stage in self.stages_spec])
        self.batchnorm_momentum = momentum

    def get_config(self):
        config = super().get_config()
        for key in ("backbone", "exit_layers"):
            config.pop(key)
        config.update(input_shape=self.image_shape, stages=self._stages_arg,
                      batchnorm_momentum=self.batchnorm_momentum)
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**egt_layers.upgrade_config(config))
