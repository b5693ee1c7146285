"""Quantization-aware fine-tuning with tensorflow-model-optimization (tfmot).

tfmot only accepts tf_keras (Keras 2) models, so the EarlyExitCNN is rebuilt as a
tf_keras *mirror*: the same layers in the same order (3x3 conv, batch norm, ReLU,
max pooling per block; per head a 1x1 conv + ReLU, a 3x3 score conv, a sigmoid gate
multiplying the features, average pooling, dense, softmax), with the trained weights
copied in and checked to give the same probabilities.

The approach (documented choice): the whole mirror, all five exits, is wrapped with
`tfmot.quantization.keras.quantize_model` and fine-tuned with the sum of the five
exits' cross-entropies (weighted by the model's `exit_weights`; the attention
consistency term is not part of this short fine-tuning), so weights adapt to int8
weight and activation rounding of the *whole* cascade. The fine-tuned weights go back
into a copy of the Keras 3 model, which `export_cascade` then splits and converts as
usual: the activation ranges are calibrated on real data as in post-training
quantization (tfmot's own ranges are moving averages of the same statistics), which
keeps the segment handoff exact by construction. Weight rounding is simulated
exactly: tfmot fake-quantizes each conv kernel per output channel before the batch
norm, and folding batch norm scales each output channel, which per-channel int8
quantization is invariant to.
"""

import numpy as np

from keras_egt.export import _deps
from keras_egt.export.segments import check_model


def _blocks(model):
    # The EarlyExitCNN preset: each stage is one ConvBlock.
    return [stage.layers[-1] for stage in model.stages]


def _tfmot():
    _deps.require("tf_keras", "quantization-aware training")
    return _deps.require("tensorflow_model_optimization", "quantization-aware training")


def build_mirror(model):
    """A float tf_keras model computing `model`'s five exit probabilities, with its weights.

    Args:
        model: an `EarlyExitCNN` on the TensorFlow backend.

    Returns:
        `(mirror, pairs)`: the tf_keras model (outputs: five `(batch, C)` probability
        tensors) and a list of `(keras_layer, mirror_layer_name)` weight pairs.
    """
    check_model(model)
    tf_keras = _deps.require("tf_keras", "quantization-aware training")
    layers = tf_keras.layers
    inputs = tf_keras.Input(shape=tuple(model.image_shape), name="image")
    h, outputs, pairs = inputs, [], []
    for k, (block, head) in enumerate(zip(_blocks(model), model.heads), start=1):
        conv = layers.Conv2D(block.filters, 3, padding="same", use_bias=False, name=f"b{k}_conv")
        bn = layers.BatchNormalization(momentum=block.bn.momentum, epsilon=block.bn.epsilon,
                                       name=f"b{k}_bn")
        h = layers.ReLU(name=f"b{k}_relu")(bn(conv(h)))
        if block.pool:
            h = layers.MaxPooling2D(2, name=f"b{k}_pool")(h)
        pairs += [(block.conv, conv.name), (block.bn, bn.name)]
        reduce, score = head.attention.reduce, head.attention.score
        r = layers.Conv2D(reduce.filters, 1, name=f"h{k}_reduce")(h)
        r = layers.ReLU(name=f"h{k}_relu")(r)
        s = layers.Conv2D(1, 3, padding="same", name=f"h{k}_score")(r)
        gate = layers.Activation("sigmoid", name=f"h{k}_gate")(s)
        gated = layers.Multiply(name=f"h{k}_gated")([gate, h])
        if hasattr(head, "pool_size"):  # adaptive average pooling to a grid
            window = head.pool_size(tuple(h.shape))
            pooled = layers.AveragePooling2D(window, strides=window, padding="valid",
                                             name=f"h{k}_pool")(gated)
            pooled = layers.Flatten(name=f"h{k}_flatten")(pooled)
        else:  # global average pooling
            pooled = layers.GlobalAveragePooling2D(name=f"h{k}_pool")(gated)
        dense = layers.Dense(model.num_classes, name=f"h{k}_classifier")
        outputs.append(layers.Softmax(name=f"exit_{k}")(dense(pooled)))
        pairs += [(reduce, f"h{k}_reduce"), (head.attention.score, f"h{k}_score"),
                  (head.classifier, dense.name)]
    mirror = tf_keras.Model(inputs, outputs, name="egt_mirror")
    for layer, name in pairs:
        mirror.get_layer(name).set_weights([np.asarray(w) for w in layer.get_weights()])
    return mirror, pairs


def _float_probabilities(model, x):
    from keras import ops

    h, out = ops.convert_to_tensor(x), []
    for block, head in zip(_blocks(model), model.heads):
        h = block(h, training=False)
        out.append(ops.convert_to_numpy(ops.softmax(head(h), axis=-1)))
    return out


def check_mirror(model, mirror, x, atol=1e-4):
    """Raises unless the tf_keras mirror gives `model`'s probabilities on `x`."""
    expected = _float_probabilities(model, x)
    got = mirror(x, training=False)
    worst = max(float(np.max(np.abs(np.asarray(g) - e))) for g, e in zip(got, expected))
    if not worst <= atol:
        raise ValueError(
            f"The tf_keras mirror of the model differs from it by {worst:.2g} in probability; "
            "the EarlyExitCNN layers changed in a way keras_egt.export.qat does not mirror."
        )


def _output_quantize_config():
    """A tfmot QuantizeConfig class quantizing a layer's output only (for Multiply)."""
    tfmot = _tfmot()
    quantize = tfmot.quantization.keras

    class OutputQuantizeConfig(quantize.QuantizeConfig):
        def get_weights_and_quantizers(self, layer):
            return []

        def get_activations_and_quantizers(self, layer):
            return []

        def set_quantize_weights(self, layer, quantize_weights):
            pass

        def set_quantize_activations(self, layer, quantize_activations):
            pass

        def get_output_quantizers(self, layer):
            return [quantize.quantizers.MovingAverageQuantizer(
                num_bits=8, per_axis=False, symmetric=False, narrow_range=False)]

        def get_config(self):
            return {}

    return OutputQuantizeConfig


def quantize_mirror(mirror):
    """`tfmot.quantization.keras.quantize_model` of the mirror (Multiply gets an output quantizer)."""
    tfmot = _tfmot()
    tf_keras = _deps.require("tf_keras", "quantization-aware training")
    quantize = tfmot.quantization.keras
    config_class = _output_quantize_config()

    def annotate(layer):
        if isinstance(layer, tf_keras.layers.Multiply):
            return quantize.quantize_annotate_layer(layer, config_class())
        if isinstance(layer, tf_keras.layers.InputLayer):
            return layer
        return quantize.quantize_annotate_layer(layer)

    annotated = tf_keras.models.clone_model(mirror, clone_function=annotate)
    annotated.set_weights(mirror.get_weights())
    with quantize.quantize_scope({"OutputQuantizeConfig": config_class}):
        return quantize.quantize_apply(annotated)


def _trained_weights(qmodel, name):
    """The variables of mirror layer `name` in the quantize-aware model, by short name.

    tfmot moves a wrapped layer's kernel into the wrapper, so the wrapper's
    variables are searched for those of the original layer (`name/kernel:0`).
    """
    for candidate in (f"quant_{name}", name):
        try:
            layer = qmodel.get_layer(candidate)
        except ValueError:
            continue
        return {
            w.name.split("/")[-1].split(":")[0]: np.asarray(w.numpy())
            for w in layer.weights if w.name.startswith(f"{name}/")
        }
    raise ValueError(f"layer {name!r} not found in the quantization-aware model.")


def quantization_aware_finetune(model, x_train, y_train, epochs=3, learning_rate=1e-4,
                                batch_size=32, validation_data=None, verbose=0,
                                return_history=False):
    """Fine-tunes a trained EarlyExitCNN with simulated int8 (tfmot) and returns a copy.

    See the module docstring for the method. TensorFlow backend only (call
    `quantization_aware_export` from other backends).

    Args:
        model: a trained `EarlyExitCNN` (not modified).
        x_train, y_train: training inputs and integer labels.
        epochs: fine-tuning epochs (a few suffice; use a low learning rate).
        learning_rate: Adam learning rate.
        batch_size: batch size.
        validation_data: optional `(x_val, y_val)`, reported per epoch.
        verbose: Keras fit verbosity.
        return_history: also return the fit history dict.

    Returns:
        A new `EarlyExitCNN` with the fine-tuned weights (or `(model, history)`).

    Example:
    >>> tuned = quantization_aware_finetune(model, x_train, y_train, epochs=3)
    >>> egt.export.export_cascade(tuned, "deploy_qat/", x_train[:256])
    """
    import keras

    check_model(model)
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(
            "quantization_aware_finetune runs on the TensorFlow backend only; use "
            "keras_egt.export.quantization_aware_export, which runs it in a TensorFlow "
            "subprocess from any backend, or set KERAS_BACKEND=tensorflow."
        )
    from keras_egt.checks import check_inputs, check_labels

    x_train = np.asarray(x_train, np.float32)
    y_train = np.asarray(y_train).reshape(-1)
    check_inputs(x_train, model.image_shape, "x_train")
    check_labels(y_train, model.num_classes, "y_train", len(x_train))
    if int(epochs) < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}.")
    tf_keras = _deps.require("tf_keras", "quantization-aware training")
    mirror, pairs = build_mirror(model)
    check_mirror(model, mirror, x_train[:8])
    qmodel = quantize_mirror(mirror)
    weights = list(model.exit_weights) if hasattr(model, "exit_weights") else [1.0] * model.num_exits
    qmodel.compile(
        optimizer=tf_keras.optimizers.Adam(learning_rate),
        loss=[tf_keras.losses.SparseCategoricalCrossentropy()] * model.num_exits,
        loss_weights=weights,
    )
    targets = [y_train] * model.num_exits
    validation = None
    if validation_data is not None:
        x_val, y_val = validation_data
        validation = (np.asarray(x_val, np.float32), [np.asarray(y_val).reshape(-1)] * model.num_exits)
    history = qmodel.fit(x_train, targets, epochs=int(epochs), batch_size=int(batch_size),
                         validation_data=validation, verbose=verbose, shuffle=True)
    tuned = model.__class__.from_config(model.get_config())
    for (original, name), tuned_layer in zip(pairs, _weight_layers(tuned)):
        tuned_layer.set_weights(_in_keras_order(_trained_weights(qmodel, name), original))
    if return_history:
        return tuned, {k: [float(v) for v in vals] for k, vals in history.history.items()}
    return tuned


def _weight_layers(model):
    """The Keras layers holding weights, in `build_mirror`'s pair order."""
    out = []
    for block, head in zip(_blocks(model), model.heads):
        out += [block.conv, block.bn, head.attention.reduce, head.attention.score, head.classifier]
    return out


def _in_keras_order(trained, original):
    """The trained weights in the order of `original.weights` (matched by name)."""
    names = [w.path.split("/")[-1] for w in original.weights]
    missing = [n for n in names if n not in trained]
    if missing:
        raise ValueError(f"the quantization-aware model lacks weights {missing} of layer "
                         f"{original.name!r}.")
    return [trained[n] for n in names]


def quantization_aware_export(model, out_dir, x_train, y_train, representative_data=None,
                              threshold=0.9, epochs=3, learning_rate=1e-4, batch_size=32,
                              class_names=None, overwrite=False, verbose=False):
    """Quantization-aware fine-tuning, then `export_cascade` of the fine-tuned model.

    Works from any Keras backend (a TensorFlow-backend subprocess does the work
    when needed). The manifest records `"quantization": "qat"` and the settings.

    Args:
        model: a trained `EarlyExitCNN` (not modified).
        out_dir: the deploy folder to create.
        x_train, y_train: data for the fine-tuning.
        representative_data: calibration inputs (default: the first 256 of x_train).
        threshold, class_names, overwrite, verbose: as `export_cascade`.
        epochs, learning_rate, batch_size: of the fine-tuning.

    Returns:
        The manifest dict.

    Example:
    >>> egt.export.quantization_aware_export(model, "deploy_qat/", x_train, y_train, epochs=3)
    """
    import keras

    from keras_egt.export import exporter

    check_model(model)
    if representative_data is None:
        representative_data = np.asarray(x_train)[:256]
    from keras_egt.cascade import resolve_thresholds

    settings = dict(threshold=list(resolve_thresholds(threshold, model.num_exits)),
                    epochs=int(epochs),
                    learning_rate=float(learning_rate), batch_size=int(batch_size),
                    class_names=None if class_names is None else [str(c) for c in class_names],
                    overwrite=bool(overwrite), verbose=bool(verbose))
    if keras.backend.backend() != "tensorflow":
        exporter.check_representative_data(representative_data, model.image_shape)
        exporter._check_out_dir(out_dir, overwrite)
        return exporter.run_in_tensorflow(
            "quantization_aware_export", model,
            {"x_train": np.asarray(x_train, np.float32), "y_train": np.asarray(y_train),
             "representative_data": np.asarray(representative_data, np.float32)},
            dict(settings, out_dir=str(out_dir)),
        )
    exporter._check_out_dir(out_dir, overwrite)
    tuned = quantization_aware_finetune(model, x_train, y_train, epochs=epochs,
                                        learning_rate=learning_rate, batch_size=batch_size,
                                        verbose=2 if verbose else 0)
    return exporter.export_cascade(
        tuned, out_dir, representative_data, threshold=settings["threshold"],
        class_names=class_names, overwrite=overwrite, verbose=verbose,
        metadata={"quantization": "qat", "qat_epochs": int(epochs),
                  "qat_learning_rate": float(learning_rate)},
    )
