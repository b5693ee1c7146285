"""Three trained early-exit models on the blob task, built and trained once per process.

`test_backbones.py` and `test_costs.py` share them: the paper preset at tiny widths, a
`keras.applications.MobileNetV2` with 4 exits, a small Functional CNN with 3 exits
(a residual connection inside its second stage, a separable conv in its third) and
the MCU family (`EarlyExitMCU`) with 3 exits and depthwise-separable blocks.
"""

import atexit
import functools
import shutil
import tempfile

import keras

import keras_egt as egt
from kit import blob_task

NUM_CLASSES = 3
IMAGE_SHAPE = (32, 32, 2)
# At 32x32 out_relu is 1x1 (input/32): the 2x2 block_12_add makes a learnable final exit.
MOBILENET_EXITS = ["block_2_add", "block_5_add", "block_9_add", "block_12_add"]
FUNCTIONAL_EXITS = ["p1", "add2", "r3"]
CASES = ("preset", "mobilenet_v2", "functional", "mcu")
EPOCHS = {"preset": 6, "mobilenet_v2": 10, "functional": 6, "mcu": 6}
MCU_STAGES = "c4p s8p | s16p | c16"


def mobilenet_v2_backbone():
    backbone = keras.applications.MobileNetV2(
        input_shape=IMAGE_SHAPE, alpha=0.35, weights=None, include_top=False
    )
    # Keras' MobileNetV2 keeps moving statistics with momentum 0.999: after the
    # few dozen steps a test affords they are still near their initial values and
    # inference-mode predictions are degenerate. Training faster is all this changes.
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    return backbone


def functional_backbone():
    layers = keras.layers
    inputs = keras.Input(IMAGE_SHAPE, name="image")
    x = layers.Conv2D(8, 3, padding="same", use_bias=False, name="c1")(inputs)
    x = layers.BatchNormalization(momentum=0.9, name="bn1")(x)
    x = layers.ReLU(name="r1")(x)
    x = layers.MaxPooling2D(2, name="p1")(x)
    y = layers.Conv2D(8, 3, padding="same", name="c2")(x)
    y = layers.ReLU(name="r2")(y)
    x = layers.Add(name="add2")([x, y])
    x = layers.SeparableConv2D(16, 3, strides=2, padding="same", name="sep3")(x)
    x = layers.BatchNormalization(momentum=0.9, name="bn3")(x)
    x = layers.ReLU(max_value=6.0, name="r3")(x)
    return keras.Model(inputs, x, name="small_cnn")


def build(name, consistency_weight=0.3, **kwargs):
    if name == "preset":
        return egt.EarlyExitCNN(NUM_CLASSES, IMAGE_SHAPE, widths=(4, 8, 8, 16, 16),
                                consistency_weight=consistency_weight, **kwargs)
    if name == "mobilenet_v2":
        return egt.EarlyExitModel(mobilenet_v2_backbone(), MOBILENET_EXITS, NUM_CLASSES,
                                  consistency_weight=consistency_weight, **kwargs)
    if name == "functional":
        return egt.EarlyExitModel(functional_backbone(), FUNCTIONAL_EXITS, NUM_CLASSES,
                                  consistency_weight=consistency_weight, **kwargs)
    if name == "mcu":
        return egt.EarlyExitMCU(NUM_CLASSES, IMAGE_SHAPE, stages=MCU_STAGES,
                                consistency_weight=consistency_weight, **kwargs)
    raise ValueError(name)


@functools.cache
def data():
    x, y = blob_task(n=448, size=IMAGE_SHAPE[0], channels=IMAGE_SHAPE[2],
                     num_classes=NUM_CLASSES, seed=3)
    return {"x_train": x[:192], "y_train": y[:192], "x_val": x[192:256], "y_val": y[192:256],
            "x_test": x[256:], "y_test": y[256:]}


@functools.cache
def trained(name):
    """`(model, history)` of case `name`, trained with λ = 0.3 on plain labels."""
    keras.utils.set_random_seed(7)
    d = data()
    model = build(name)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), metrics=["accuracy"])
    history = model.fit(d["x_train"], d["y_train"], epochs=EPOCHS[name], batch_size=32,
                        verbose=0)
    return model, history.history


_TMP = []


@atexit.register
def _clean():
    for path in _TMP:
        shutil.rmtree(path, ignore_errors=True)


@functools.cache
def deployed(name, threshold=0.9):
    """The int8 export of `trained(name)` (TensorFlow backend): its folder and manifest."""
    model, _ = trained(name)
    folder = tempfile.mkdtemp(prefix=f"egt_{name}_")
    _TMP.append(folder)
    out = f"{folder}/deploy"
    manifest = egt.export.export_cascade(model, out, data()["x_train"][:64], threshold=threshold)
    return out, manifest
