"""Input checks shared by training, evaluation, the cascade and export.

Every entry point that takes user data calls these, so a bad array gets the same
message wherever it enters.
"""

import math
import numbers

import numpy as np

# Longest list of offending values quoted in a message.
_QUOTE = 10


# How the data loaders scale integer images to [0, 1] (as matplotlib reads 8- and
# 16-bit PNGs); an in-memory integer batch is refused with the same divisor as its fix.
IMAGE_SCALES = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


def _dtype_name(dtype):
    if isinstance(dtype, str):
        return dtype
    if isinstance(getattr(dtype, "name", None), str):  # numpy and TensorFlow dtypes
        return dtype.name
    try:
        return np.dtype(dtype).name
    except TypeError:
        # A backend dtype numpy does not know (torch.uint8, jnp.bfloat16): its last word.
        return str(dtype).rsplit(".", 1)[-1]


def check_image_dtype(dtype, where="x"):
    """Raises a ValueError unless images of `dtype` are floating point: the one uint8 rule.

    Every place images enter (training, evaluation, the cascade, calibration, plots,
    explanations, export calibration data, the int8 runners) refuses integer and
    boolean images instead of guessing their scale: a uint8 batch used raw (0-255)
    by a model trained on the data loaders' [0, 1] inputs answers garbage (on the
    int8 runner it saturated every input, 0% label agreement), while dividing it
    silently would break a model trained on raw levels. The message names the fix
    the loaders apply (`keras_egt.datasets.load_npz` / `load_folder` divide uint8 by
    255 and uint16 by 65535). The int8 runners' already-quantized int8 inputs are
    their own path, checked before this.

    Args:
        dtype: a numpy dtype, a dtype name (`"uint8"`) or a backend tensor's dtype.
        where: name of the argument, for the message.

    Returns:
        The dtype's name.

    Example:
    >>> check_image_dtype(np.float32)
    'float32'
    >>> check_image_dtype("uint8")       # ValueError: ... x.astype("float32") / 255 ...
    """
    name = _dtype_name(dtype)
    if name.startswith(("float", "bfloat")):
        return name
    scale = {key.name: value for key, value in IMAGE_SCALES.items()}.get(name)
    fix = (f'divide them as the data loaders do: {where}.astype("float32") / {scale:g}'
           if scale else f'scale them as the training data was and cast them, e.g. '
           f'{where}.astype("float32") / 255 for 8-bit levels')
    raise ValueError(
        f"{where} must hold floating-point images (integer images are not rescaled: raw "
        f"0-255 levels on a model trained on [0, 1] inputs give garbage); {fix}. "
        f"Received: {where}.dtype={name}."
    )


def check_inputs(x, image_shape, where="x"):
    """Raises a clear ValueError if `x` is not a finite float batch of `image_shape` inputs.

    Integer and boolean images are refused (`check_image_dtype`: divide uint8 by
    255 as the data loaders do), so a batch means the same to every entry point.

    Args:
        x: array-like `(batch, H, W, C)` of floats.
        image_shape: the model's `(H, W, C)`.
        where: name of the argument, for the message.

    Example:
    >>> check_inputs(np.zeros((2, 32, 32, 2), "float32"), (32, 32, 2))
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
    check_image_dtype(x.dtype, where)
    if not np.all(np.isfinite(x)):
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
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise ValueError(
            f"{where}: labels must be integer class indices 0..{num_classes - 1}, got dtype "
            f"{y.dtype} (e.g. {_sample(y)}). Map class names to indices first, e.g. "
            "np.unique(names, return_inverse=True)[1]."
        )
    if y.size and (not np.all(np.isfinite(y)) or np.any(y != np.round(y))):
        raise ValueError(f"{where}: labels must be whole numbers.")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(
            f"{where}: labels must lie in 0..{num_classes - 1}, found values from "
            f"{int(y.min())} to {int(y.max())}."
        )


def _sample(values):
    flat = np.asarray(values).reshape(-1)[:3]
    return ", ".join(repr(v.item() if hasattr(v, "item") else v)[:40] for v in flat)


def _is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def check_int(value, name, minimum=None, maximum=None):
    """`value` as an int, or a ValueError: no bools, no fractions (4.7 is not 4).

    Args:
        value: an int, a numpy integer, or a float with an integral value.
        name: the argument's name, for the message.
        minimum: smallest allowed value (None: no bound).
        maximum: largest allowed value (None: no bound).

    Returns:
        The int.

    Example:
    >>> check_int(4.0, "width", minimum=1)
    4
    """
    if not _is_real(value) or not math.isfinite(float(value)) or float(value) != int(value):
        raise ValueError(f"{name} must be a whole number, got {value!r:.60}.")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}.")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}.")
    return value


def check_number(value, name, minimum=None, maximum=None, include_maximum=True):
    """`value` as a finite float in [minimum, maximum] (or [minimum, maximum)), or a ValueError.

    Example:
    >>> check_number(0.99, "batchnorm_momentum", 0, 1, include_maximum=False)
    0.99
    """
    if not _is_real(value) or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number, got {value!r:.60}.")
    value = float(value)
    high_ok = maximum is None or (value <= maximum if include_maximum else value < maximum)
    if (minimum is not None and value < minimum) or not high_ok:
        low = "-inf" if minimum is None else f"{minimum:g}"
        high = "inf" if maximum is None else f"{maximum:g}"
        bracket = "]" if include_maximum and maximum is not None else ")"
        raise ValueError(f"{name} must lie in [{low}, {high}{bracket}, got {value:g}.")
    return value


def check_fraction(value, name, include_one=True):
    """`value` as a float in [0, 1] (or [0, 1) without `include_one`), or a ValueError.

    For shares and accuracy drops.

    Example:
    >>> check_fraction(0.005, "max_accuracy_drop", include_one=False)
    0.005
    """
    top = 1.0 if include_one else math.nextafter(1.0, 0.0)
    if not _is_real(value) or not math.isfinite(float(value)) or not 0 <= float(value) <= top:
        raise ValueError(
            f"{name} must be a fraction in [0, 1{']' if include_one else ')'} (0.005 = half a "
            f"percentage point), got {value!r:.60}."
        )
    return float(value)


def check_weights(values, count, name):
    """`count` finite weights >= 0, not all zero, as a tuple of floats, or a ValueError.

    Example:
    >>> check_weights((1, 1, 0.5), 3, "exit_weights")
    (1.0, 1.0, 0.5)
    """
    try:
        values = tuple(values)
    except TypeError:
        raise ValueError(f"{name} must be {count} numbers, got {values!r:.60}.") from None
    if len(values) != count:
        raise ValueError(f"{name} must be {count} numbers (one per exit), got {len(values)}.")
    bad = [v for v in values if not _is_real(v) or not math.isfinite(float(v)) or float(v) < 0]
    if bad:
        raise ValueError(
            f"{name} must be finite numbers >= 0, got {', '.join(repr(v) for v in bad[:_QUOTE])}"
            f" in {values!r:.120}."
        )
    values = tuple(float(v) for v in values)
    if not any(values):
        raise ValueError(f"{name} are all zero: no exit would be trained.")
    return values


class NonFiniteError(FloatingPointError, ValueError):
    """Model outputs, probabilities or a training loss that are NaN or Inf.

    A `FloatingPointError` and a `ValueError`, so a CLI that maps `ValueError` to
    one line and exit 2 catches it too.
    """


def check_finite_outputs(values, where, fix="the model's weights are probably NaN or Inf "
                         "(diverged training); retrain it with a lower learning rate"):
    """Raises `NonFiniteError` if `values` (logits or probabilities) hold NaN or Inf.

    Calibration on NaN probabilities would otherwise certify threshold 0.0, and a
    cascade would answer class 0 from exit 1 for every input.

    Args:
        values: array-like model outputs, e.g. `(K, n, C)` probabilities.
        where: what the values are, for the message.
        fix: the fix named in the message.

    Returns:
        `values` as a numpy array.

    Example:
    >>> check_finite_outputs(np.ones((2, 3, 4)), "probabilities").shape
    (2, 3, 4)
    """
    values = np.asarray(values)
    if np.issubdtype(values.dtype, np.number) and not np.all(np.isfinite(values)):
        bad = int(np.size(values) - np.count_nonzero(np.isfinite(values)))
        raise NonFiniteError(
            f"{where} hold {bad} non-finite values (NaN or Inf) out of {values.size}: {fix}. "
            f"Received: {where} with {bad} non-finite entries."
        )
    return values
