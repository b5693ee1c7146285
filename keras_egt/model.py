"""`EarlyExitModel`: any Keras backbone with an attention exit at chosen layers, trained with EGT."""

import warnings

import keras
import numpy as np
from keras import ops

from keras_egt import callbacks as egt_callbacks
from keras_egt import layers as egt_layers
from keras_egt.checks import (
    check_image_dtype,
    check_inputs,
    check_int,
    check_labels,
    check_number,
    check_weights,
)
from keras_egt.losses import (
    check_consistency_options,
    consistency_terms,
    exit_consistencies,
    weighted_consistency,
)
from keras_egt.stages import split_backbone


@keras.saving.register_keras_serializable(package="keras_egt")
class EarlyExitModel(keras.Model):
    """An early-exit network: a backbone cut at `exit_layers`, an `ExitHead` after each cut.

    The backbone runs stage by stage (`keras_egt.stages.split_backbone`): stage k ends
    at exit layer k, and exit head k (spatial attention, attention-gated pooling,
    dense) classifies from that feature map. Calling the model returns the K exits'
    logits, first to last; the last exit layer is the final exit.

    The training loss is `sum_k w_k * loss(y, logits_k) + λ * L_cons`, where
    `L_cons` (`keras_egt.losses.consistency_loss`) pulls every early exit's
    attention map towards the final one. It is added with `add_loss` only when
    λ > 0, so λ = 0 is exactly the baseline. The unweighted consistency is tracked
    either way: metrics `consistency_loss` (1 - average cosine), `consistency` (the
    average cosine of the early exits with the final one, the paper's Table I
    "Avg") and `exit_k_consistency` for k = 1..K-1. The `fit` progress bar shows the
    loss, the consistency and the final exit's accuracy; `history` holds every
    metric.

    Args:
        backbone: a built Functional or Sequential Keras model with one image input
            of known `(H, W, C)`, e.g. `keras.applications.MobileNetV2(...,
            include_top=False)`.
        exit_layers: the backbone layers that end each stage, first to last (at
            least 2), as layer objects of `backbone` or their names. Each must
            output a 4-D feature map, and no skip connection may cross it (see
            `split_backbone`). Pass layer objects for automatically named layers:
            `keras.applications` models name them by a per-process counter
            (`re_lu_22` on the first build is `re_lu_45` on the second), so a name
            read off one build misses on another. The config stores the names of
            this backbone, which its own serialized config keeps, so a saved model
            reloads in any process.
        num_classes: number of classes.
        consistency_weight: λ >= 0, or a list of one λ per early exit (K - 1).
        exit_weights: K per-exit classification-loss weights (default 1 each), used
            as `loss_weights` unless `compile` is given its own.
        consistency_target: `"final"` (exit k vs the final exit, the paper's EGT) or
            `"next"` (exit k vs exit k+1, hierarchical).
        consistency_loss: `"cosine"` (EGT) or `"attention_transfer"` (Zagoruyko &
            Komodakis 2017); see `keras_egt.losses.consistency_terms`. The tracked
            metrics (`consistency`, `exit_k_consistency`) always mean the cosine of
            exit k with the final exit (the paper's Table I), whatever the variant.
        stop_gradient_target: whether the final map is a fixed target of the
            consistency loss (see `consistency_loss`).
        attention_hidden_channels: hidden width of every attention module
            (`None`: `max(8, C // 8)`).
        head_grid: cells per side of the heads' pooled grid (see `ExitHead`).
        batchnorm_momentum: a momentum in [0, 1) set on every `BatchNormalization`
            layer of the backbone, or None to keep theirs. Keras' default 0.99 leaves
            the moving statistics near their initial values for hundreds of steps on
            a small data set: the model trains well and predicts at chance. With
            None, a backbone with such batch norms gets one warning naming them;
            0.9 (PyTorch's 0.1) is what `EarlyExitCNN` and `EarlyExitMCU` use.
        **kwargs: `keras.Model` arguments (`name`, `dtype`, e.g.
            `dtype="mixed_bfloat16"`).

    Call arguments:
        inputs: float images `(batch, H, W, C)` of the backbone's input shape;
            integer images are refused (`keras_egt.checks.check_image_dtype`:
            divide uint8 by 255 as the data loaders do).
        training: whether batch norm and dropout run in training mode.

    Returns (from `call`):
        A list of K float32 logits tensors `(batch, num_classes)`, first exit first.

    Example:
    >>> backbone = keras.applications.MobileNetV2(
    ...     input_shape=(64, 64, 2), alpha=0.35, weights=None, include_top=False)
    >>> model = EarlyExitModel(backbone, ["block_2_add", "block_5_add", "block_12_add",
    ...                                   "out_relu"], num_classes=9)
    >>> model.compile(optimizer="adam", metrics=["accuracy"])
    >>> model.fit(x_train, y_train, epochs=50)
    >>> logits = model(x)                    # four (batch, 9) tensors
    >>> maps = model.attention_maps(x)       # four (batch, H_k, W_k, 1) maps
    >>> cuts = egt.valid_cuts(backbone)      # or exits as layer objects of this build:
    >>> model = EarlyExitModel(backbone, [backbone.get_layer(cuts[i]) for i in (30, 80, -1)], 9)
    """

    def __init__(
        self,
        backbone,
        exit_layers,
        num_classes,
        consistency_weight=0.3,
        exit_weights=None,
        stop_gradient_target=True,
        attention_hidden_channels=None,
        head_grid=4,
        consistency_target="final",
        consistency_loss="cosine",
        batchnorm_momentum=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if batchnorm_momentum is not None:
            batchnorm_momentum = check_number(batchnorm_momentum, "batchnorm_momentum", 0, 1,
                                               include_maximum=False)
        _set_batchnorm_momentum(backbone, batchnorm_momentum)
        self.batchnorm_momentum = batchnorm_momentum
        stages = split_backbone(backbone, exit_layers)
        num_exits = len(stages)
        image_shape = tuple(backbone.inputs[0].shape[1:])
        if len(image_shape) != 3 or any(d is None for d in image_shape):
            raise ValueError(
                f"The backbone's input must have a known (height, width, channels); got "
                f"{image_shape}. Build it with input_shape=(H, W, C)."
            )
        num_classes = check_int(num_classes, "num_classes", minimum=2)
        consistency_target, consistency_loss, consistency_weight = check_consistency_options(
            consistency_target, consistency_loss, consistency_weight, num_exits - 1
        )
        exit_weights = (1.0,) * num_exits if exit_weights is None else check_weights(
            exit_weights, num_exits, "exit_weights"
        )
        if attention_hidden_channels is not None:
            attention_hidden_channels = check_int(
                attention_hidden_channels, "attention_hidden_channels", minimum=1
            )
        head_grid = check_int(head_grid, "head_grid", minimum=1)

        self.backbone = backbone
        self.exit_layers = [stage.output._keras_history.operation.name for stage in stages]
        self.stages = stages
        self.num_exits = num_exits
        self.num_classes = int(num_classes)
        self.image_shape = tuple(int(d) for d in image_shape)
        self.consistency_weight = consistency_weight
        self.consistency_target = consistency_target
        self.consistency_loss = consistency_loss
        self.exit_weights = exit_weights
        self.stop_gradient_target = bool(stop_gradient_target)
        self.attention_hidden_channels = attention_hidden_channels
        self.head_grid = int(head_grid)
        self.output_names = [f"exit_{k + 1}" for k in range(num_exits)]
        self.heads = [
            egt_layers.ExitHead(
                self.num_classes, attention_hidden_channels, grid=self.head_grid,
                dtype=self.dtype_policy, name=f"exit_{k + 1}",
            )
            for k in range(num_exits)
        ]
        # Validation values of these (val_consistency, val_exit_k_consistency) are
        # the paper's Table I figures, so KerasTuner can rank trials by them.
        self.consistency_loss_tracker = keras.metrics.Mean(name="consistency_loss")
        self.consistency_tracker = keras.metrics.Mean(name="consistency")
        self.exit_consistency_trackers = [
            keras.metrics.Mean(name=f"exit_{k + 1}_consistency") for k in range(num_exits - 1)
        ]
        self._consistency = None
        self.build((None,) + self.image_shape)

    @property
    def feature_shapes(self):
        """The `(H, W, C)` feature map at every exit layer, first to last."""
        return [tuple(int(d) for d in stage.output.shape[1:]) for stage in self.stages]

    def build(self, input_shape):
        if self.built:
            # Built in __init__ already; a later call (e.g. `build_from_config` when
            # KerasTuner's Hyperband reloads a trial) must not rebuild the layers.
            return
        for head, shape in zip(self.heads, self.feature_shapes):
            head.build((None,) + shape)
        self.built = True

    def _check_rank(self, inputs):
        shape = tuple(inputs.shape)
        if len(shape) != 4 or any(
            d is not None and d != e for d, e in zip(shape[1:], self.image_shape)
        ):
            raise ValueError(
                f"{type(self).__name__} expects inputs of shape (batch,) + "
                f"{self.image_shape} (its input_shape), got {shape}. Add a batch axis, "
                "or resize the inputs to the size the model was built for."
            )

    def __call__(self, inputs, *args, **kwargs):
        # Here, not in `call`: Keras wraps an error raised inside `call` in a
        # multi-line report.
        check_image_dtype(_dtype_of(inputs), "inputs")
        return super().__call__(inputs, *args, **kwargs)

    def _forward(self, inputs, training=None):
        self._check_rank(inputs)
        x = inputs
        logits, maps = [], []
        for stage, head in zip(self.stages, self.heads):
            x = stage(x, training=training)
            out, attention = head(x, return_attention=True)
            # Losses and softmaxes in float32, also under a mixed precision policy.
            logits.append(ops.cast(out, "float32"))
            maps.append(ops.cast(attention, "float32"))
        return logits, maps

    def call(self, inputs, training=None):
        logits, maps = self._forward(inputs, training=training)
        per_exit = exit_consistencies(maps, self.stop_gradient_target)
        if (self.consistency_target, self.consistency_loss) == ("final", "cosine"):
            # The paper's loss is 1 - the tracked cosines: computed once per step.
            terms = [1.0 - c for c in per_exit]
        else:
            terms = consistency_terms(maps, self.consistency_target, self.consistency_loss,
                                      self.stop_gradient_target)
        penalty = weighted_consistency(terms, self.consistency_weight)
        if penalty is not None:
            self.add_loss(penalty)
        # Keras 3 has no add_metric: the values are read back by compute_loss
        # within the same traced step, on every backend.
        self._consistency = [ops.stop_gradient(c) for c in per_exit]
        return logits

    def attention_maps(self, x, training=False):
        """Returns every exit's spatial attention map (each sums to 1 over H x W).

        Args:
            x: inputs `(batch, H, W, C)`.
            training: run batch norm in training mode.

        Returns:
            A list of K float32 tensors `(batch, H_k, W_k, 1)`, first exit first.

        Example:
        >>> maps = model.attention_maps(x[:8])
        """
        # Before the cast to the compute dtype, which would hide a uint8 batch.
        check_image_dtype(_dtype_of(x), "x")
        x = ops.convert_to_tensor(x, dtype=self.compute_dtype)
        return self._forward(x, training=training)[1]

    # --- training -----------------------------------------------------------

    def compile(self, optimizer="adam", loss=None, loss_weights=None, metrics=None, **kwargs):
        """Configures training; plain labels and one metric list cover all exits.

        Args:
            optimizer: as `keras.Model.compile`.
            loss: a loss for every exit (default sparse categorical cross-entropy
                on logits), or a list of K.
            loss_weights: per-exit weights; defaults to the model's `exit_weights`.
            metrics: a list applied to every exit (reported as `exit_k_<name>`),
                or a dict keyed by `exit_k`.
            **kwargs: passed to `keras.Model.compile`.
        """
        if loss is None:
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        if not isinstance(loss, (list, tuple, dict)):
            loss = [loss] * self.num_exits
        if loss_weights is None:
            loss_weights = list(self.exit_weights)
        if metrics is not None and not isinstance(metrics, dict):
            metrics = {name: _copy_metrics(metrics) for name in self.output_names}
        super().compile(
            optimizer=optimizer, loss=loss, loss_weights=loss_weights, metrics=metrics,
            **kwargs,
        )

    # Defined so that `load_model` restores the compile state: the stored config
    # already holds the per-exit losses and metrics that `compile` expanded.
    def get_compile_config(self):
        return super().get_compile_config()

    def compile_from_config(self, config):
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if getattr(self, "optimizer", None) is not None and self.built:
            self.optimizer.build(self.trainable_variables)

    def _per_exit(self, value):
        if value is None or isinstance(value, (list, tuple, dict)):
            return value
        return [value] * self.num_exits

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss = super().compute_loss(
            x=x, y=self._per_exit(y), y_pred=y_pred,
            sample_weight=self._per_exit(sample_weight), training=training,
        )
        if self._consistency is not None:
            batch = ops.cast(ops.shape(y_pred[0])[0], "float32")
            average = sum(self._consistency) / len(self._consistency)
            self.consistency_loss_tracker.update_state(1.0 - average, sample_weight=batch)
            self.consistency_tracker.update_state(average, sample_weight=batch)
            for tracker, value in zip(self.exit_consistency_trackers, self._consistency):
                tracker.update_state(value, sample_weight=batch)
        return loss

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        return super().compute_metrics(
            x, self._per_exit(y), y_pred, self._per_exit(sample_weight)
        )

    def fit(self, x=None, y=None, validation_data=None, callbacks=None, verbose="auto",
            **kwargs):
        """`keras.Model.fit`, after checking the data so bad input fails before any step.

        Numpy inputs are checked whole; a `tf.data.Dataset` or `PyDataset` by its
        first batch. Unless `callbacks` holds a `keras.callbacks.ProgbarLogger`, the
        progress bar shows `egt.callbacks.CompactProgbar`'s few metrics.
        """
        self._check_data(x, y, "x")
        if validation_data is not None and not _is_dataset(validation_data):
            self._check_data(validation_data[0], validation_data[1], "validation_data")
        elif validation_data is not None:
            self._check_data(validation_data, None, "validation_data")
        callbacks = list(callbacks or [])
        if verbose != 0 and not any(
            isinstance(c, keras.callbacks.ProgbarLogger) for c in callbacks
        ):
            callbacks.append(egt_callbacks.CompactProgbar(self.num_exits))
        return super().fit(x, y, validation_data=validation_data, callbacks=callbacks,
                           verbose=verbose, **kwargs)

    def evaluate(self, x=None, y=None, **kwargs):
        self._check_data(x, y, "x")
        return super().evaluate(x, y, **kwargs)

    def predict(self, x, *args, **kwargs):
        """`keras.Model.predict`, after the checks of `fit` (shape, float dtype, finite).

        Example:
        >>> logits = model.predict(x_test, verbose=0)   # K arrays (n, num_classes)
        """
        self._check_data(x, None, "x")
        return super().predict(x, *args, **kwargs)

    def _check_data(self, x, y, where):
        if x is None:
            return
        if y is None and _is_dataset(x):
            x, y = _first_batch(x)
            if x is None:
                return
        check_inputs(x, self.image_shape, where)
        if y is not None:
            check_labels(y, self.num_classes, where, len(x))

    def get_config(self):
        config = super().get_config()
        config.update(
            backbone=keras.saving.serialize_keras_object(self.backbone),
            exit_layers=list(self.exit_layers),
            num_classes=self.num_classes,
            consistency_weight=self.consistency_weight,
            exit_weights=self.exit_weights,
            stop_gradient_target=self.stop_gradient_target,
            attention_hidden_channels=self.attention_hidden_channels,
            head_grid=self.head_grid,
            consistency_target=self.consistency_target,
            consistency_loss=self.consistency_loss,
            batchnorm_momentum=self.batchnorm_momentum,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("backbone"), dict):
            config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)


# Keras' BatchNormalization default; at or above it the moving statistics lag.
_SLOW_MOMENTUM = 0.99


def _set_batchnorm_momentum(backbone, momentum):
    """Sets `momentum` on the backbone's batch norms, or warns once about slow ones (None)."""
    norms = [layer for layer in backbone._flatten_layers(include_self=False)
             if isinstance(layer, keras.layers.BatchNormalization)]
    if momentum is not None:
        for layer in norms:
            layer.momentum = momentum
        return
    slow = [layer.name for layer in norms if layer.momentum >= _SLOW_MOMENTUM]
    if slow:
        shown = ", ".join(slow[:8]) + (f" and {len(slow) - 8} more" if len(slow) > 8 else "")
        warnings.warn(
            f"EarlyExitModel: {len(slow)} BatchNormalization layers of the backbone keep a "
            f"momentum >= {_SLOW_MOMENTUM} ({shown}). On a small data set their moving "
            "statistics stay near the initial values, so the model can train well and "
            "predict at chance. Pass batchnorm_momentum=0.9 to set them. Received: "
            f"momentum={max(layer.momentum for layer in norms):g}.",
            stacklevel=3,
        )


def _copy_metrics(metrics):
    # One metric object may not serve two outputs: give every exit its own copy.
    return [
        m if isinstance(m, str) else m.__class__.from_config(m.get_config())
        for m in metrics
    ]


def _dtype_of(x):
    dtype = getattr(x, "dtype", None)
    return keras.backend.standardize_dtype(np.asarray(x).dtype if dtype is None else dtype)


def _is_dataset(data):
    return not isinstance(data, (np.ndarray, list, tuple)) and not hasattr(data, "__array__")


def _first_batch(data):
    if isinstance(data, keras.utils.PyDataset):
        batch = data[0]
    elif iter(data) is data:
        return None, None  # a one-shot iterator: peeking would drop its first batch
    else:
        batch = next(iter(data))
    if not isinstance(batch, (list, tuple)) or len(batch) < 2:
        return np.asarray(batch), None
    return np.asarray(batch[0]), np.asarray(batch[1])
