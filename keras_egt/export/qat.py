"""Quantization-aware fine-tuning with tensorflow-model-optimization (tfmot), for any backbone.

tfmot only accepts tf_keras (Keras 2) models, so the Keras 3 model is rebuilt as a
tf_keras *mirror* by a generic route rather than a hand-written copy of one
architecture: each stage's Functional graph is walked node by node and every layer
is recreated in tf_keras from its own config (`tf_keras.layers.deserialize`, keeping
only the arguments the tf_keras class takes; initializers, regularizers and
constraints are dropped since the weights are copied), then its trained weights are
copied in by name. The mirror is checked to give the model's probabilities
(`check_mirror`) before any fine-tuning.

Supported layers (`SUPPORTED_LAYERS`): `InputLayer`, `Conv2D`, `DepthwiseConv2D`,
`SeparableConv2D` (as a depthwise then a 1x1 conv), `Dense`, `BatchNormalization`,
`ReLU` (e.g. `max_value=6`), `Activation`, `Softmax`, `MaxPooling2D`,
`AveragePooling2D`, `GlobalAveragePooling2D`, `GlobalMaxPooling2D`, `ZeroPadding2D`,
`Cropping2D`, `UpSampling2D`, `Add`, `Multiply`, `Concatenate`, `Flatten`,
`Reshape`, `Dropout`, `SpatialDropout2D`, nested Functional models of these, and
keras-egt's own composite layers (`ConvBlock`, `ExitHead`), which `_COMPOSITES`
expands into the standard layers above. That covers `EarlyExitCNN` and
`keras.applications.MobileNetV2`. Any other layer stops the QAT with an error
naming it (post-training quantization, `export_cascade`, has no such limit).

The approach (documented choice): the whole mirror, all K exits, is wrapped with
`tfmot.quantization.keras.quantize_model` and fine-tuned with the sum of the K
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

import inspect

import numpy as np

from keras_egt.export import _deps
from keras_egt.export.segments import check_model

SUPPORTED_LAYERS = (
    "InputLayer", "Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Dense",
    "BatchNormalization", "ReLU", "Activation", "Softmax", "MaxPooling2D",
    "AveragePooling2D", "GlobalAveragePooling2D", "GlobalMaxPooling2D", "ZeroPadding2D",
    "Cropping2D", "UpSampling2D", "Add", "Multiply", "Concatenate", "Flatten", "Reshape",
    "Dropout", "SpatialDropout2D",
)
# Weights that tf_keras names otherwise than Keras 3 (tf_keras name: Keras 3 name).
_WEIGHT_NAMES = {"DepthwiseConv2D": {"depthwise_kernel": "kernel", "bias": "bias"}}
# Config entries that hold how weights start or are penalised: irrelevant to a
# mirror whose weights are copied, and serialised differently by Keras 3.
_DROPPED_SUFFIXES = ("_initializer", "_regularizer", "_constraint")


def _tfmot():
    _deps.require("tf_keras", "quantization-aware training")
    return _deps.require("tensorflow_model_optimization", "quantization-aware training")


def _tf_config(layer, tf_class, **overrides):
    """`layer`'s config with only the arguments `tf_class` accepts."""
    accepted = set(inspect.signature(tf_class.__init__).parameters) | {"name", "trainable"}
    config = {
        key: value for key, value in layer.get_config().items()
        if key in accepted and key != "dtype" and not key.endswith(_DROPPED_SUFFIXES)
    }
    config.update(overrides)
    return config


class _Mirror:
    """Builds tf_keras layers for Keras 3 ones and remembers which weights go where.

    `pairs` lists `(keras_layer, mirror_layer_name, weight_names)`: `weight_names`
    maps the mirror layer's weight names to the Keras layer's (None: the same).
    """

    def __init__(self, tf_keras):
        self.tf_keras = tf_keras
        self.layers = tf_keras.layers
        self.pairs = []
        self._made = {}

    def standard(self, layer, name=None, **overrides):
        """The tf_keras twin of a standard Keras layer (made once per layer)."""
        if id(layer) in self._made:
            return self._made[id(layer)]
        class_name = type(layer).__name__
        tf_class = getattr(self.layers, class_name)
        twin = self.layers.deserialize({
            "class_name": class_name,
            "config": _tf_config(layer, tf_class, name=name or layer.name, **overrides),
        })
        if layer.weights:
            self.pairs.append((layer, twin.name, _WEIGHT_NAMES.get(class_name)))
        self._made[id(layer)] = twin
        return twin

    def call(self, layer, args):
        """Applies the mirror of `layer` to the tf_keras tensors `args`."""
        import keras

        composite = _COMPOSITES.get(type(layer).__name__)
        if composite is not None and _is_keras_egt(layer):
            return composite(self, layer, args[0])
        if isinstance(layer, keras.Model) and hasattr(layer, "_nodes_by_depth"):
            return self.graph(layer, list(args))
        if type(layer).__name__ not in SUPPORTED_LAYERS or not _is_keras_builtin(layer):
            raise ValueError(
                f"Quantization-aware training cannot mirror layer {layer.name!r} "
                f"({type(layer).__module__}.{type(layer).__name__}) into tf_keras: "
                f"supported are {', '.join(SUPPORTED_LAYERS)} and keras-egt's "
                f"{', '.join(sorted(_COMPOSITES))}. Export without QAT "
                "(egt.export.export_cascade, post-training quantization), or replace "
                "the layer by supported ones."
            )
        if type(layer).__name__ == "SeparableConv2D":
            return _separable(self, layer, args[0])
        return self.standard(layer)(args[0] if len(args) == 1 else list(args))

    def graph(self, functional, inputs):
        """Mirrors the Functional graph of `functional` applied to tf_keras `inputs`."""
        values = {id(t): v for t, v in zip(functional.inputs, inputs)}

        def value(tensor):
            if id(tensor) in values:
                return values[id(tensor)]
            operation, node_index, _ = tensor._keras_history
            node = operation._inbound_nodes[node_index]
            for parent in node.input_tensors:
                value(parent)
            args, _ = node.arguments.fill_in(values)
            flat = [a for a in _flatten(args) if a is not None and not isinstance(a, bool)]
            out = self.call(operation, flat)
            for keras_tensor, tf_tensor in zip(node.output_tensors, _flatten(out)):
                values[id(keras_tensor)] = tf_tensor
            return values[id(tensor)]

        outputs = [value(t) for t in functional.outputs]
        return outputs[0] if len(outputs) == 1 else outputs


def _flatten(structure):
    if isinstance(structure, (list, tuple)):
        return [leaf for item in structure for leaf in _flatten(item)]
    if isinstance(structure, dict):
        return [leaf for item in structure.values() for leaf in _flatten(item)]
    return [structure]


def _is_keras_builtin(layer):
    return type(layer).__module__.startswith("keras.")


def _is_keras_egt(layer):
    return type(layer).__module__.startswith("keras_egt.")


def _separable(mirror, layer, x):
    layers = mirror.layers
    depthwise = layers.DepthwiseConv2D(
        layer.kernel_size, strides=layer.strides, padding=layer.padding,
        depth_multiplier=layer.depth_multiplier, dilation_rate=layer.dilation_rate,
        use_bias=False, name=f"{layer.name}_depthwise",
    )
    pointwise = layers.Conv2D(
        layer.filters, 1, use_bias=layer.use_bias, activation=layer.activation,
        name=f"{layer.name}_pointwise",
    )
    y = pointwise(depthwise(x))
    mirror.pairs.append((layer, depthwise.name, {"depthwise_kernel": "depthwise_kernel"}))
    mirror.pairs.append((layer, pointwise.name, {"kernel": "pointwise_kernel", "bias": "bias"}))
    return y


def _conv_block(mirror, block, x):
    """`keras_egt.layers.ConvBlock`: conv, batch norm, ReLU, optional max pooling."""
    x = mirror.standard(block.conv, name=f"{block.name}_conv")(x)
    x = mirror.standard(block.bn, name=f"{block.name}_bn")(x)
    x = mirror.layers.ReLU(name=f"{block.name}_relu")(x)
    if block.pooling is not None:
        x = mirror.standard(block.pooling, name=f"{block.name}_pool")(x)
    return x


def _exit_head(mirror, head, x, prefix):
    """`keras_egt.layers.ExitHead` k as softmax probabilities (layers named `h<k>_...`)."""
    layers = mirror.layers
    r = mirror.standard(head.attention.reduce, name=f"{prefix}_reduce")(x)
    r = layers.ReLU(name=f"{prefix}_relu")(r)
    s = mirror.standard(head.attention.score, name=f"{prefix}_score")(r)
    gate = layers.Activation("sigmoid", name=f"{prefix}_gate")(s)
    gated = layers.Multiply(name=f"{prefix}_gated")([gate, x])
    window = head.pool_size(tuple(x.shape))
    pooled = layers.AveragePooling2D(window, strides=window, padding="valid",
                                     name=f"{prefix}_pool")(gated)
    pooled = layers.Flatten(name=f"{prefix}_flatten")(pooled)
    logits = mirror.standard(head.classifier, name=f"{prefix}_classifier")(pooled)
    return logits


# keras-egt's composite layers, expanded into standard tf_keras layers.
_COMPOSITES = {"ConvBlock": _conv_block}


def _short(variable):
    return variable.name.split("/")[-1].split(":")[0]


def _copy_weights(mirror_model, pairs):
    for layer, name, names in pairs:
        target = mirror_model.get_layer(name)
        values = []
        for w in target.weights:
            key = _short(w) if names is None else names[_short(w)]
            values.append(np.asarray(_to_numpy(layer, key), np.float32))
        target.set_weights(values)


def _to_numpy(layer, key):
    from keras import ops

    for w in layer.weights:
        if w.path.split("/")[-1] == key:
            return ops.convert_to_numpy(ops.cast(w.value, "float32"))
    raise ValueError(f"layer {layer.name!r} has no weight {key!r}.")


def build_mirror(model):
    """A float tf_keras model computing `model`'s K exit probabilities, with its weights.

    Every stage's graph is rebuilt layer by layer from the layers' configs (see the
    module docstring for the supported layers); exit head k becomes layers named
    `h<k>_reduce`, `h<k>_score`, `h<k>_classifier` ...

    Args:
        model: an `EarlyExitModel` (e.g. an `EarlyExitCNN`) on the TensorFlow backend.

    Returns:
        `(mirror, pairs)`: the tf_keras model (outputs: K `(batch, C)` probability
        tensors, named `exit_1` ... `exit_K`) and a list of `(keras_layer,
        mirror_layer_name, weight_names)` weight pairs.

    Raises:
        ValueError: naming the first layer that has no tf_keras mirror.

    Example:
    >>> mirror, pairs = build_mirror(model)
    >>> check_mirror(model, mirror, x[:8])
    """
    check_model(model)
    tf_keras = _deps.require("tf_keras", "quantization-aware training")
    mirror = _Mirror(tf_keras)
    inputs = tf_keras.Input(shape=tuple(model.image_shape), name="image")
    h, outputs = inputs, []
    for k, (stage, head) in enumerate(zip(model.stages, model.heads), start=1):
        if hasattr(stage, "_nodes_by_depth"):
            h = mirror.graph(stage, [h])
        else:
            h = mirror.call(stage, [h])
        logits = _exit_head(mirror, head, h, f"h{k}")
        outputs.append(tf_keras.layers.Softmax(name=f"exit_{k}")(logits))
    model_ = tf_keras.Model(inputs, outputs, name="egt_mirror")
    _copy_weights(model_, mirror.pairs)
    return model_, mirror.pairs


def _float_probabilities(model, x):
    from keras import ops

    h, out = ops.convert_to_tensor(x), []
    for stage, head in zip(model.stages, model.heads):
        h = stage(h, training=False)
        out.append(ops.convert_to_numpy(ops.softmax(ops.cast(head(h), "float32"), axis=-1)))
    return out


def check_mirror(model, mirror, x, atol=1e-4):
    """Raises unless the tf_keras mirror gives `model`'s probabilities on `x`.

    Args:
        model: the Keras model.
        mirror: `build_mirror(model)[0]`.
        x: a few real inputs.
        atol: the largest allowed difference in probability.

    Example:
    >>> check_mirror(model, build_mirror(model)[0], x_train[:8])
    """
    expected = _float_probabilities(model, x)
    got = mirror(np.asarray(x, np.float32), training=False)
    worst = max(float(np.max(np.abs(np.asarray(g) - e))) for g, e in zip(got, expected))
    if not worst <= atol:
        raise ValueError(
            f"The tf_keras mirror of the model differs from it by {worst:.2g} in probability; "
            "a layer's tf_keras twin computes something else than the Keras layer (a "
            "config argument keras_egt.export.qat does not carry over)."
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
    tuned.set_weights(model.get_weights())
    _write_back(qmodel, pairs, model, tuned)
    if return_history:
        return tuned, {k: [float(v) for v in vals] for k, vals in history.history.items()}
    return tuned


def _write_back(qmodel, pairs, model, tuned):
    """Sets the fine-tuned weights of `qmodel` into `tuned`, a copy of `model`.

    The copy was made from `model`'s config, so its layers come in the same order:
    a layer of `model` is found in `tuned` by its position.
    """
    originals = list(model._flatten_layers(include_self=False, recursive=True))
    copies = list(tuned._flatten_layers(include_self=False, recursive=True))
    position = {id(layer): i for i, layer in enumerate(originals)}
    trained = {}
    for layer, name, names in pairs:
        for short, value in _trained_weights(qmodel, name).items():
            trained.setdefault(id(layer), {})[short if names is None else names[short]] = value
    for layer, _, _ in pairs:
        if id(layer) in trained:
            copies[position[id(layer)]].set_weights(
                _in_keras_order(trained.pop(id(layer)), layer))


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
    # Before any fine-tuning: a diverged model would be tuned for minutes, then refused.
    exporter.check_finite_model(
        model, exporter.check_representative_data(representative_data, model.image_shape))
    from keras_egt.exit_rule import resolve_thresholds

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
