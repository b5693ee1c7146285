"""The early-exit CNN trained with Explanation-Guided Training."""

import keras
import numpy as np
from keras import ops

from keras_egt import layers as egt_layers
from keras_egt.checks import check_inputs, check_labels
from keras_egt.losses import check_consistency_options, consistency_terms, exit_consistencies
from keras_egt.losses import weighted_consistency

WIDTH_PRESETS = {
    # The paper's backbone.
    "paper": (64, 128, 256, 512, 512),
    # Fits a Cortex-M4F-class part (nRF52840: 1 MB flash, 256 KB SRAM) as five
    # int8 segments: ~70 KiB of weights, the largest TFLM arena well under 64 KiB.
    "micro": (8, 16, 32, 64, 64),
}
NUM_EXITS = 5
MIN_SPATIAL_SIZE = 32


def resolve_widths(widths):
    """Turns a preset name or a tuple into five channel widths.

    Args:
        widths: `"paper"`, `"micro"` or a sequence of 5 positive ints.

    Returns:
        A tuple of 5 ints.

    Example:
    >>> resolve_widths("micro")
    (8, 16, 32, 64, 64)
    """
    if isinstance(widths, str):
        if widths not in WIDTH_PRESETS:
            raise ValueError(
                f"Unknown widths preset {widths!r}; use one of {sorted(WIDTH_PRESETS)} "
                "or a tuple of 5 channel counts."
            )
        return WIDTH_PRESETS[widths]
    widths = tuple(int(w) for w in widths)
    if len(widths) != NUM_EXITS or min(widths) < 1:
        raise ValueError(
            f"widths must be 5 positive channel counts (one per block), got {widths}."
        )
    return widths


@keras.saving.register_keras_serializable(package="keras_egt")
class EarlyExitCNN(keras.Model):
    """Five-block CNN with an attention exit after every block, trained with EGT.

    Block k is a 3x3 conv, batch norm and ReLU, followed by 2x2 max pooling for
    blocks 1-4, so the final exit's attention map is input/16 (4x4 at 64x64).
    Every block feeds an `ExitHead` (spatial attention + attention-gated pooling +
    dense). Calling the model returns the five exits' logits, first to last.

    The training loss is `sum_k w_k * loss(y, logits_k) + λ * L_cons`, where
    `L_cons` (see `keras_egt.losses.consistency_loss`) pulls every early exit's
    attention map towards the final one. It is added with `add_loss` only when
    λ > 0, so λ = 0 is exactly the baseline. The unweighted consistency is
    tracked either way: metrics `consistency_loss` (1 - average cosine),
    `consistency` (the average cosine of exits 1-4 with exit 5, the paper's Table I
    "Avg") and `exit_k_consistency` for k = 1..4.

    Args:
        num_classes: number of classes.
        input_shape: `(height, width, channels)`, height and width >= 32.
        widths: `"paper"` (64, 128, 256, 512, 512), `"micro"` or 5 ints.
        consistency_weight: λ >= 0, or a list of one λ per early exit (4).
        consistency_target: `"final"` (exit k vs exit 5, the paper's EGT) or
            `"next"` (exit k vs exit k+1, hierarchical).
        consistency_loss: `"cosine"` (EGT) or `"attention_transfer"` (Zagoruyko &
            Komodakis 2017); see `keras_egt.losses.consistency_terms`. The tracked
            metrics (`consistency`, `exit_k_consistency`) always mean the cosine of
            exit k with exit 5 (the paper's Table I), whatever the variant trained.
        exit_weights: 5 per-exit classification-loss weights (default 1 each),
            used as `loss_weights` unless `compile` is given its own.
        stop_gradient_target: whether the final map is a fixed target of the
            consistency loss (see `consistency_loss`).
        batch_norm_momentum: momentum of the blocks' moving statistics.
        attention_hidden_channels: hidden width of every attention module
            (`None`: `max(8, C // 8)`).

    Example:
    >>> model = EarlyExitCNN(num_classes=9, input_shape=(64, 64, 2), consistency_weight=0.3)
    >>> model.compile(optimizer="adam", metrics=["accuracy"])
    >>> model.fit(x_train, y_train, epochs=50)
    >>> logits = model(x)                    # five (batch, 9) tensors
    >>> maps = model.attention_maps(x)       # five (batch, H_k, W_k, 1) maps
    """

    def __init__(
        self,
        num_classes,
        input_shape,
        widths="paper",
        consistency_weight=0.3,
        exit_weights=None,
        stop_gradient_target=True,
        batch_norm_momentum=egt_layers.BATCH_NORM_MOMENTUM,
        attention_hidden_channels=None,
        consistency_target="final",
        consistency_loss="cosine",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if int(num_classes) < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}.")
        input_shape = tuple(input_shape)
        if len(input_shape) != 3:
            raise ValueError(
                f"input_shape must be (height, width, channels), got {input_shape}."
            )
        if min(input_shape[:2]) < MIN_SPATIAL_SIZE or input_shape[2] < 1:
            raise ValueError(
                f"input_shape {input_shape} is too small: height and width must be >= "
                f"{MIN_SPATIAL_SIZE} (four 2x2 poolings) and channels >= 1. Resize or "
                "pad the inputs."
            )
        consistency_target, consistency_loss, consistency_weight = check_consistency_options(
            consistency_target, consistency_loss, consistency_weight, NUM_EXITS - 1
        )
        exit_weights = (1.0,) * NUM_EXITS if exit_weights is None else tuple(
            float(w) for w in exit_weights
        )
        if len(exit_weights) != NUM_EXITS or min(exit_weights) < 0:
            raise ValueError(f"exit_weights must be 5 numbers >= 0, got {exit_weights}.")

        self.num_classes = int(num_classes)
        self.image_shape = tuple(int(d) for d in input_shape)
        self.widths = resolve_widths(widths)
        self._widths_arg = widths if isinstance(widths, str) else self.widths
        self.consistency_weight = consistency_weight
        self.consistency_target = consistency_target
        self.consistency_loss = consistency_loss
        self.exit_weights = exit_weights
        self.stop_gradient_target = bool(stop_gradient_target)
        self.batch_norm_momentum = float(batch_norm_momentum)
        self.attention_hidden_channels = attention_hidden_channels
        self.output_names = [f"exit_{k + 1}" for k in range(NUM_EXITS)]

        self.blocks = [
            egt_layers.ConvBlock(
                w, pool=k < NUM_EXITS - 1, batch_norm_momentum=self.batch_norm_momentum,
                name=f"block_{k + 1}",
            )
            for k, w in enumerate(self.widths)
        ]
        self.heads = [
            egt_layers.ExitHead(
                self.num_classes, attention_hidden_channels, name=f"exit_{k + 1}"
            )
            for k in range(NUM_EXITS)
        ]
        # Validation values of these (val_consistency, val_exit_k_consistency) are
        # the paper's Table I figures, so KerasTuner can rank trials by them.
        self.consistency_loss_tracker = keras.metrics.Mean(name="consistency_loss")
        self.consistency_tracker = keras.metrics.Mean(name="consistency")
        self.exit_consistency_trackers = [
            keras.metrics.Mean(name=f"exit_{k + 1}_consistency") for k in range(NUM_EXITS - 1)
        ]
        self._consistency = None
        self.build((None,) + self.image_shape)

    def build(self, input_shape):
        if self.built:
            # Built in __init__ already; a later call (e.g. `build_from_config` when
            # KerasTuner's Hyperband reloads a trial) must not rebuild the layers.
            return
        shape = tuple(input_shape)
        for block, head in zip(self.blocks, self.heads):
            block.build(shape)
            shape = block.compute_output_shape(shape)
            head.build(shape)
        self.built = True

    def _check_rank(self, inputs):
        shape = tuple(inputs.shape)
        if len(shape) != 4 or any(
            d is not None and d != e for d, e in zip(shape[1:], self.image_shape)
        ):
            raise ValueError(
                f"EarlyExitCNN expects inputs of shape (batch,) + {self.image_shape} (its "
                f"input_shape), got {shape}. Add a batch axis, or resize the inputs to "
                "the size the model was built for."
            )

    def _forward(self, inputs, training=None):
        self._check_rank(inputs)
        x = inputs
        logits, maps = [], []
        for block, head in zip(self.blocks, self.heads):
            x = block(x, training=training)
            out, attention = head(x, return_attention=True)
            logits.append(out)
            maps.append(attention)
        return logits, maps

    def call(self, inputs, training=None):
        logits, maps = self._forward(inputs, training=training)
        per_exit = exit_consistencies(maps, self.stop_gradient_target)
        penalty = weighted_consistency(
            consistency_terms(maps, self.consistency_target, self.consistency_loss,
                              self.stop_gradient_target),
            self.consistency_weight,
        )
        if penalty is not None:
            self.add_loss(penalty)
        # Keras 3 has no add_metric: the values are read back by compute_loss
        # within the same traced step, on every backend.
        self._consistency = [ops.stop_gradient(c) for c in per_exit]
        return logits

    def attention_maps(self, x, training=False):
        """Returns the five exits' spatial attention maps (each sums to 1 over H x W).

        Args:
            x: inputs `(batch, H, W, C)`.
            training: run batch norm in training mode.

        Returns:
            A list of 5 tensors `(batch, H_k, W_k, 1)`, first exit first.

        Example:
        >>> maps = model.attention_maps(x[:8])
        """
        x = ops.convert_to_tensor(x, dtype=self.compute_dtype)
        return self._forward(x, training=training)[1]

    # --- training -----------------------------------------------------------

    def compile(self, optimizer="adam", loss=None, loss_weights=None, metrics=None, **kwargs):
        """Configures training; plain labels and one metric list cover all exits.

        Args:
            optimizer: as `keras.Model.compile`.
            loss: a loss for every exit (default sparse categorical cross-entropy
                on logits), or a list of 5.
            loss_weights: per-exit weights; defaults to the model's `exit_weights`.
            metrics: a list applied to every exit (reported as `exit_k_<name>`),
                or a dict keyed by `exit_k`.
            **kwargs: passed to `keras.Model.compile`.
        """
        if loss is None:
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        if not isinstance(loss, (list, tuple, dict)):
            loss = [loss] * NUM_EXITS
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
        return [value] * NUM_EXITS

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

    def fit(self, x=None, y=None, validation_data=None, **kwargs):
        """`keras.Model.fit`, after checking the data so bad input fails before any step.

        Numpy inputs are checked whole; a `tf.data.Dataset` or `PyDataset` by its
        first batch.
        """
        self._check_data(x, y, "x")
        if validation_data is not None and not _is_dataset(validation_data):
            self._check_data(validation_data[0], validation_data[1], "validation_data")
        elif validation_data is not None:
            self._check_data(validation_data, None, "validation_data")
        return super().fit(x, y, validation_data=validation_data, **kwargs)

    def evaluate(self, x=None, y=None, **kwargs):
        self._check_data(x, y, "x")
        return super().evaluate(x, y, **kwargs)

    def _check_data(self, x, y, where):
        if x is None:
            return
        if y is None and _is_dataset(x):
            x, y = _first_batch(x)
        check_inputs(x, self.image_shape, where)
        if y is not None:
            check_labels(y, self.num_classes, where, len(x))

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            input_shape=self.image_shape,
            widths=self._widths_arg,
            consistency_weight=self.consistency_weight,
            exit_weights=self.exit_weights,
            stop_gradient_target=self.stop_gradient_target,
            batch_norm_momentum=self.batch_norm_momentum,
            attention_hidden_channels=self.attention_hidden_channels,
            consistency_target=self.consistency_target,
            consistency_loss=self.consistency_loss,
        )
        return config

    @classmethod
    def from_config(cls, config):
        if isinstance(config.get("widths"), list):
            config["widths"] = tuple(config["widths"])
        return cls(**config)


def _copy_metrics(metrics):
    # One metric object may not serve two outputs: give every exit its own copy.
    return [
        m if isinstance(m, str) else m.__class__.from_config(m.get_config())
        for m in metrics
    ]


def _is_dataset(data):
    return not isinstance(data, (np.ndarray, list, tuple)) and not hasattr(data, "__array__")


def _first_batch(data):
    if isinstance(data, keras.utils.PyDataset):
        batch = data[0]
    else:
        batch = next(iter(data))
    if not isinstance(batch, (list, tuple)) or len(batch) < 2:
        return np.asarray(batch), None
    return np.asarray(batch[0]), np.asarray(batch[1])
