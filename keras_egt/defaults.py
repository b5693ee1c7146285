"""Every default of the recipe, the cascade and the built-in data, in one Keras-free place.

The training recipe (`keras_egt.recipe`), the radar loaders, the command line's
options (whose `--help` must answer without importing Keras) and the benchmarks all
read their defaults here, so one edit changes them everywhere.
"""

__all__ = ["BATCH_SIZE", "CALIBRATION_USERS", "CONSISTENCY_WEIGHT", "DECAY_EVERY",
           "DECAY_FACTOR", "EPOCHS", "LEARNING_RATE", "NUM_TEST", "NUM_TRAIN", "THRESHOLD",
           "decay_every"]

# The paper's recipe: Adam at 1e-3, halved every 15 of 50 epochs (batch size unstated).
LEARNING_RATE = 1e-3
DECAY_EVERY = 15
DECAY_FACTOR = 0.5
EPOCHS = 50
BATCH_SIZE = 32
# λ of the paper's best EGT model, and its exit threshold.
CONSISTENCY_WEIGHT = 0.3
THRESHOLD = 0.9
# The paper's radar set: 1,363 training and 1,364 test samples.
NUM_TRAIN = 1363
NUM_TEST = 1364
# Fresh simulated users the thresholds are calibrated on (never training or test users).
CALIBRATION_USERS = 500


def decay_every(epochs):
    """The paper's schedule scaled to `epochs`: halve every 30% of them (15 of 50).

    Example:
    >>> decay_every(20)
    6
    """
    return max(1, round(int(epochs) * DECAY_EVERY / EPOCHS))
