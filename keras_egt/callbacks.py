"""Training callbacks: the paper's step learning-rate schedule, a stop on a NaN loss."""

import math

import keras

from keras_egt.checks import NonFiniteError


@keras.saving.register_keras_serializable(package="keras_egt")
class StepDecay(keras.callbacks.Callback):
    """Multiplies the learning rate by `factor` every `every` epochs (the paper: 0.5 per 15).

    The rate at epoch `e` (0-based) is `initial * factor ** (e // every)`, where
    `initial` is the optimizer's rate when training starts.

    Args:
        every: epochs between decays (> 0).
        factor: multiplier in (0, 1].
        verbose: print the new rate when it changes.

    Example:
    >>> model.fit(x, y, epochs=50, callbacks=[StepDecay(every=15, factor=0.5)])
    """

    def __init__(self, every=15, factor=0.5, verbose=0):
        super().__init__()
        # A NaN passes `not 0 < x` checks and int(nan) names no argument: test finiteness.
        if not _finite(every) or float(every) < 1 or float(every) != int(every):
            raise ValueError(f"StepDecay: every must be a positive number of epochs, got {every}. "
                             f"Received: every={every!r}.")
        if not _finite(factor) or not 0 < float(factor) <= 1:
            raise ValueError(f"StepDecay: factor must be in (0, 1], got {factor}. "
                             f"Received: factor={factor!r}.")
        every, factor = int(every), float(factor)
        self.every = every
        self.factor = factor
        self.verbose = verbose
        self.initial_learning_rate = None

    def on_train_begin(self, logs=None):
        self.initial_learning_rate = float(
            keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)
        )

    def rate(self, epoch):
        """The learning rate for `epoch` (0-based)."""
        return self.initial_learning_rate * self.factor ** (epoch // self.every)

    def on_epoch_begin(self, epoch, logs=None):
        new = self.rate(epoch)
        if new != float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)):
            self.model.optimizer.learning_rate = new
            if self.verbose:
                print(f"\nEpoch {epoch + 1}: StepDecay sets the learning rate to {new:.3g}.")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(
                keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)
            )

    def get_config(self):
        return {"every": self.every, "factor": self.factor, "verbose": self.verbose}


def _finite(value):
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


@keras.saving.register_keras_serializable(package="keras_egt")
class StopOnNonFinite(keras.callbacks.Callback):
    """Stops training with `NonFiniteError`, naming the epoch, once the loss is NaN or Inf.

    Keras' `TerminateOnNaN` only sets `stop_training`, so `fit` returns normally and
    the caller saves an all-NaN model. Raising instead leaves nothing to save.
    `keras_egt.recipe.fit` (and so `keras-egt train`) always adds it.

    Example:
    >>> model.fit(x, y, epochs=5, callbacks=[StopOnNonFinite()])
    """

    def __init__(self):
        super().__init__()
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def get_config(self):
        return {}

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.model.stop_training = True
            raise NonFiniteError(
                f"the training loss became {float(loss)} at epoch {self._epoch + 1}, batch "
                f"{batch + 1}: training diverged, so no model is kept. Lower the learning "
                f"rate or check the data for extreme values. Received: loss={float(loss)}."
            )


class CompactProgbar(keras.callbacks.ProgbarLogger):
    """The `fit` progress bar of an early-exit model, under 100 columns.

    With K exits `fit` logs four metrics per exit and the consistency of every
    early exit: a line of several hundred characters. This bar shows the loss
    (`loss`), the average consistency (`cons`) and the final exit's accuracy
    (`acc`), plus `val_acc` with validation data, on a 10-character bar; `History`
    still receives every metric under its full name. `EarlyExitModel.fit` adds it
    unless `callbacks` holds a `ProgbarLogger` already.

    Args:
        num_exits: the model's number of exits K.
        shown: `{logged name: displayed name}` to show instead (default: the four
            above).

    Example:
    >>> model.fit(x, y, callbacks=[CompactProgbar(5, shown={"exit_5_loss": "loss5"})])
    """

    def __init__(self, num_exits, shown=None):
        super().__init__()
        k = int(num_exits)
        self.shown = dict(shown or {"loss": "loss", "consistency": "cons",
                                    f"exit_{k}_accuracy": "acc",
                                    f"val_exit_{k}_accuracy": "val_acc"})

    def _keep(self, logs):
        logs = logs or {}
        return {short: logs[name] for name, short in self.shown.items() if name in logs}

    def _maybe_init_progbar(self):
        super()._maybe_init_progbar()
        self.progbar.width = 10

    def _update_progbar(self, batch, logs=None):
        super()._update_progbar(batch, self._keep(logs))

    def _finalize_progbar(self, logs):
        super()._finalize_progbar(self._keep(logs))
