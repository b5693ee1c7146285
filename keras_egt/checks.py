"""Input checks shared by training, evaluation, the cascade and export.

Every entry point that takes user data calls these, so a bad array gets the same
message wherever it enters.
"""

import numpy as np


def check_inputs(x, image_shape, where="x"):
    """Raises a clear ValueError if `x` is not a finite batch of `image_shape` inputs.

    Args:
        x: array-like `(batch, H, W, C)`.
        image_shape: the model's `(H, W, C)`.
        where: name of the argument, for the message.
    """
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(
            f"{where} must have rank 4 (batch, height, width, channels); got shape "
            f"{x.shape}. Add a batch axis with x[None] or a channel axis with x[..., None]."
        )
    if tuple(x.shape[1:]) != tuple(image_shape):
        # The exit heads' dense layers are sized for the input_shape's 4x4 grids.
        raise ValueError(
            f"{where} has samples of shape {x.shape[1:]}, the model was built for "
            f"{tuple(image_shape)}: resize or pad the inputs, or build the model with "
            f"input_shape={x.shape[1:]}."
        )
    if np.issubdtype(x.dtype, np.number) and not np.all(np.isfinite(x)):
        bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
        raise ValueError(
            f"{where} holds {bad} non-finite values (NaN or Inf); clean or impute them "
            "before training."
        )


def check_labels(y, num_classes, where="y", num_samples=None):
    """Raises a clear ValueError unless `y` holds integer labels in 0..num_classes-1.

    Args:
        y: array-like of integer class labels.
        num_classes: the model's number of classes.
        where: name of the argument, for the message.
        num_samples: expected number of labels, if known.
    """
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[-1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(
            f"{where}: labels must be integer class indices of shape (batch,), got shape "
            f"{y.shape}. Pass plain labels, not one-hot or five copies."
        )
    if num_samples is not None and len(y) != num_samples:
        raise ValueError(f"{where}: {num_samples} inputs but {len(y)} labels.")
    if y.size and (not np.all(np.isfinite(y)) or np.any(y != np.round(y))):
        raise ValueError(f"{where}: labels must be whole numbers.")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(
            f"{where}: labels must lie in 0..{num_classes - 1}, found values from "
            f"{int(y.min())} to {int(y.max())}."
        )
