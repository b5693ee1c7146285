"""The paper's training recipe, written once: Adam at 1e-3, the rate halved every 15 epochs.

The demo, `keras-egt train`, the KerasTuner hypermodel, the examples and the
benchmarks all train through `compile_model` and `fit`, so a change of recipe
reaches every one of them.
"""

import keras

from keras_egt.callbacks import StepDecay, StopOnNonFinite
from keras_egt.checks import NonFiniteError, check_number
from keras_egt.defaults import BATCH_SIZE, DECAY_EVERY, DECAY_FACTOR, EPOCHS, LEARNING_RATE

__all__ = ["BATCH_SIZE", "DECAY_EVERY", "DECAY_FACTOR", "EPOCHS", "LEARNING_RATE",
           "NonFiniteError", "check_learning_rate", "compile_model", "fit", "schedule"]



def check_learning_rate(learning_rate):
    """`learning_rate` as a finite float > 0, or a ValueError (inf trains an all-NaN model).

    Example:
    >>> check_learning_rate(1e-3)
    0.001
    """
    rate = check_number(learning_rate, "learning_rate", minimum=0)
    if rate == 0:
        raise ValueError("learning_rate must be > 0 (0 trains nothing), e.g. 1e-3. "
                         "Received: learning_rate=0.")
    return rate


def compile_model(model, learning_rate=LEARNING_RATE, metrics=("accuracy",)):
    """Compiles an early-exit model with Adam and cross-entropy on every exit.

    Args:
        model: an `EarlyExitModel`.
        learning_rate: Adam's initial rate.
        metrics: metrics for every exit.

    Returns:
        `model`, compiled.

    Example:
    >>> compile_model(model).fit(x, y, callbacks=schedule())
    """
    model.compile(optimizer=keras.optimizers.Adam(check_learning_rate(learning_rate)),
                  metrics=list(metrics))
    return model


def schedule(decay_every=DECAY_EVERY, decay_factor=DECAY_FACTOR):
    """The paper's learning-rate schedule as a list of callbacks (`StepDecay`)."""
    return [StepDecay(every=decay_every, factor=decay_factor)]


def fit(model, x, y=None, epochs=EPOCHS, batch_size=BATCH_SIZE, learning_rate=LEARNING_RATE,
        decay_every=DECAY_EVERY, decay_factor=DECAY_FACTOR, callbacks=None, **kwargs):
    """Compiles and trains `model` with the paper's recipe.

    Args:
        model: an `EarlyExitModel`.
        x: training inputs (as `keras.Model.fit`).
        y: their plain integer labels.
        epochs: epochs (the paper: 50).
        batch_size: samples per step.
        learning_rate: Adam's initial rate (the paper: 1e-3).
        decay_every: epochs between halvings of the rate (the paper: 15).
        decay_factor: the factor applied each time (the paper: 0.5).
        callbacks: more callbacks.
        **kwargs: passed to `model.fit` (`validation_split`, `verbose`, ...).

    Returns:
        The `History` of `model.fit`.

    Raises:
        ValueError: a hyperparameter is not finite or out of range (before any step).
        NonFiniteError: the loss became NaN or Inf (`StopOnNonFinite`); a
            `FloatingPointError` and a `ValueError`, raised before anything is saved.

    Example:
    >>> history = egt.recipe.fit(model, x_train, y_train, validation_split=0.15)
    """
    plan = [*schedule(decay_every, decay_factor), StopOnNonFinite()]
    compile_model(model, learning_rate)
    return model.fit(x, y, epochs=epochs, batch_size=batch_size,
                     callbacks=[*plan, *(callbacks or [])], **kwargs)
