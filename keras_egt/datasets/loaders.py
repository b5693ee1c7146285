"""Bring-your-own-data loaders: `.npz` files and folders of `.npy` / `.png` files.

Both return the layout of `radar_gestures.load_data`:
`(x_train, y_train), (x_test, y_test)` with float32 inputs `(n, H, W, C)` and int32
labels in `0..C-1`. Bad input raises a `ValueError` (or `FileNotFoundError`) whose
message names the file and the problem.
"""

import os
import warnings

import numpy as np

from keras_egt.checks import IMAGE_SCALES

_EXTENSIONS = (".npy", ".png")
# Unsigned integer images are scaled to [0, 1] as PNGs are (matplotlib reads an 8- or
# 16-bit PNG as floats in [0, 1]), so one data set loads the same from .npz, .npy or .png.
_IMAGE_DTYPES = IMAGE_SCALES
# Empty classes quoted in a message at most.
_QUOTE = 10


def _to_float(x, where):
    """float32 samples; uint8 / uint16 scaled to [0, 1] like PNGs, with a warning."""
    x = np.asarray(x)
    scale = _IMAGE_DTYPES.get(x.dtype)
    if scale is None:
        return x.astype(np.float32)
    warnings.warn(
        f"{where}: {x.dtype} inputs are scaled to [0, 1] (divided by {scale:g}), as PNGs are; "
        "save float32 arrays to keep your own scaling.", stacklevel=3)
    return (x.astype(np.float32) / np.float32(scale)).astype(np.float32)


def _as_images(x, where="inputs"):
    x = _to_float(x, where)
    return x[..., None] if x.ndim == 3 else x


def _check_channels_last(shape, where):
    """Refuses (C, H, W) samples: a leading axis of <= 4 before two larger ones."""
    if len(shape) == 3 and shape[0] <= 4 < min(shape[1], shape[2]):
        raise ValueError(
            f"{where}: samples of shape {tuple(shape)} look channels-first (C, H, W); "
            "keras-egt wants channels last (H, W, C). Transpose them with "
            "x.transpose(0, 2, 3, 1) for an (n, C, H, W) array, or "
            "sample.transpose(1, 2, 0) for one sample."
        )


def _check_inputs(x, where):
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise ValueError(f"{where}: inputs must be numeric, got dtype {x.dtype}.")
    if x.ndim not in (3, 4):
        raise ValueError(
            f"{where}: inputs must be (samples, height, width[, channels]), got shape {x.shape}."
        )
    if x.ndim == 4:
        _check_channels_last(x.shape[1:], where)
    if np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.complexfloating):
        bad = ~np.isfinite(x)
        if bad.any():
            first = int(np.argwhere(bad)[0][0])
            raise ValueError(
                f"{where}: {int(bad.sum())} NaN/Inf values (first in sample {first}); "
                "remove or fill them first."
            )


def _check_labels(y, where):
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(
            f"{where}: labels must be a 1-D array of class indices, got shape {y.shape} "
            "(one-hot labels: pass y.argmax(-1))."
        )
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise ValueError(
            f"{where}: labels must be integer class indices, got dtype {y.dtype}. Map class "
            "names to indices first, e.g. np.unique(names, return_inverse=True)[1]."
        )
    if np.issubdtype(y.dtype, np.floating) and (
        not np.all(np.isfinite(y)) or np.any(y != np.round(y))
    ):
        raise ValueError(f"{where}: labels must be whole numbers (class indices 0..C-1).")
    if y.size and (y.min() < -(2 ** 62) or y.max() > 2 ** 62):
        raise ValueError(f"{where}: labels must be class indices 0..C-1, found {y.max():g}.")
    return y.astype(np.int64)


def _check_classes(labels, num_classes, where):
    """Raises unless the labels lie in 0..C-1."""
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or (num_classes is not None and high >= num_classes):
        top = num_classes - 1 if num_classes is not None else "C-1"
        raise ValueError(
            f"{where}: labels must lie in 0..{top}, found values from {low} to {high}."
        )


def load_npz(path, num_classes=None):
    """Loads a data set from an `.npz` file with `x_train`, `y_train`, `x_test`, `y_test`.

    Inputs of shape `(n, H, W)` get a channel axis. `uint8` / `uint16` inputs are
    scaled to [0, 1] (divided by 255 / 65535, with a warning), as `load_folder` reads
    PNGs; other dtypes are kept as they are. Channels-first arrays are refused with
    the transpose that fixes them. Labels must be integer class
    indices in `0..C-1`, with `C = num_classes` or the largest training label + 1,
    and every class must have training samples. `x_test` / `y_test` may both be
    left out; the test arrays are then empty.

    Args:
        path: the `.npz` file.
        num_classes: the number of classes C, if known.

    Returns:
        `(x_train, y_train), (x_test, y_test)`: float32 inputs `(n, H, W, C)`, int32
        labels.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not an `.npz`, a missing array, mismatched lengths, NaN/Inf,
            labels outside `0..C-1`, an empty class, or train and test samples of
            different shapes; the message names the file.

    Example:
    >>> (x, y), _ = load_npz("my_radar.npz")
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No such data file: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            files = set(data.files)
            arrays = {k: np.asarray(data[k]) for k in files}
    except Exception as error:  # zip, pickle and header errors vary by numpy version
        raise ValueError(f"{path}: not a readable .npz file ({error}).") from error
    missing = [k for k in ("x_train", "y_train") if k not in arrays]
    has_test = [k in arrays for k in ("x_test", "y_test")]
    if any(has_test) and not all(has_test):
        missing += [k for k in ("x_test", "y_test") if k not in arrays]
    if missing:
        raise ValueError(
            f"{path}: missing arrays {missing}; an .npz data set holds x_train, y_train "
            f"and optionally x_test, y_test (found {sorted(arrays)})."
        )
    splits = ("train", "test") if all(has_test) else ("train",)
    out = {}
    for split in splits:
        where = f"{path} ({split})"
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        _check_inputs(x, f"{where} x_{split}")
        y = _check_labels(y, f"{where} y_{split}")
        if len(x) != len(y):
            raise ValueError(
                f"{where}: x_{split} has {len(x)} samples but y_{split} has {len(y)} labels; "
                "they must match."
            )
        if split == "train" and len(x) == 0:
            raise ValueError(f"{where}: x_train holds no samples.")
        out[split] = (_as_images(x, f"{where} x_{split}"), y)
    x_train, y_train = out["train"]
    _check_classes(y_train, num_classes, f"{path} (train) y_train")
    given = num_classes is not None
    if not given:
        num_classes = int(y_train.max()) + 1
    if given and num_classes > len(y_train):
        raise ValueError(f"{path}: num_classes={num_classes} but only {len(y_train)} training "
                         "samples, so some classes would have none.")
    if num_classes > len(y_train):
        # Checked before counting: a label of 10**9 must not allocate 10**9 counters.
        raise ValueError(
            f"{path}: the largest training label is {int(y_train.max())}, so there would be "
            f"{num_classes} classes for {len(y_train)} training samples; labels must be class "
            "indices 0..C-1 with samples in every class (renumber them, e.g. "
            "np.unique(y, return_inverse=True)[1])."
        )
    counts = np.bincount(y_train, minlength=num_classes)
    empty = [int(c) for c in np.flatnonzero(counts == 0)]
    if empty:
        more = f" and {len(empty) - _QUOTE} more" if len(empty) > _QUOTE else ""
        raise ValueError(
            f"{path}: classes {empty[:_QUOTE]}{more} have no training samples; labels must "
            f"cover 0..{num_classes - 1}."
        )
    if "test" in out:
        x_test, y_test = out["test"]
        if len(y_test):
            _check_classes(y_test, num_classes, f"{path} (test) y_test")
        if x_test.shape[1:] != x_train.shape[1:]:
            raise ValueError(
                f"{path}: train samples have shape {x_train.shape[1:]} but test samples "
                f"{x_test.shape[1:]}; they must match."
            )
    else:
        x_test, y_test = np.zeros((0,) + x_train.shape[1:], np.float32), np.zeros(0, np.int64)
    return (x_train, y_train.astype(np.int32)), (x_test, y_test.astype(np.int32))


def _read_sample(path):
    if path.endswith(".npy"):
        return np.load(path, allow_pickle=False)
    import matplotlib.image  # lazily: only PNG folders need it

    return matplotlib.image.imread(path)  # 8-bit PNG -> float32 in [0, 1]


def _class_folders(path):
    return sorted(
        d for d in os.listdir(path)
        if not d.startswith(".") and os.path.isdir(os.path.join(path, d))
    )


def _read_split(path, class_names, shape):
    xs, ys = [], []
    for label, name in enumerate(class_names):
        folder = os.path.join(path, name)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"No such class folder: {folder}")
        files = sorted(
            f for f in os.listdir(folder) if f.lower().endswith(_EXTENSIONS) and not f.startswith(".")
        )
        if not files:
            raise ValueError(f"{folder}: class {name!r} is empty (no .npy or .png files).")
        for file in files:
            file_path = os.path.join(folder, file)
            try:
                sample = np.asarray(_read_sample(file_path))
            except Exception as error:
                raise ValueError(f"{file_path}: unreadable ({error}).") from error
            if not np.issubdtype(sample.dtype, np.number):
                raise ValueError(f"{file_path}: not numeric (dtype {sample.dtype}).")
            sample = _to_float(sample, file_path)
            if sample.ndim == 2:
                sample = sample[..., None]
            if sample.ndim != 3:
                raise ValueError(
                    f"{file_path}: expected an (H, W) or (H, W, C) array, got shape {sample.shape}."
                )
            _check_channels_last(sample.shape, file_path)
            if shape[0] is None:
                shape[0], shape[1] = sample.shape, file_path
            elif sample.shape != shape[0]:
                raise ValueError(
                    f"{file_path}: shape {sample.shape} differs from {shape[0]} of {shape[1]}; "
                    "all samples must share one shape."
                )
            if not np.all(np.isfinite(sample)):
                raise ValueError(f"{file_path}: holds NaN or Inf values.")
            xs.append(sample)
            ys.append(label)
    return np.stack(xs), np.asarray(ys, np.int32)


def load_folder(path, class_names=None, test_fraction=0.0, seed=0, return_class_names=False):
    """Loads `.npy` / `.png` samples from one sub-folder per class.

    Two layouts: `path/<class>/<file>` (all training data, optionally split by
    `test_fraction`), or `path/train/<class>/...` and `path/test/<class>/...`.
    Classes are the sub-folders in sorted order, or `class_names` in that order.
    `.npy` files hold an `(H, W)` or `(H, W, C)` array; PNGs are read as floats in
    [0, 1], and so are `uint8` / `uint16` `.npy` arrays (divided by 255 / 65535, with
    a warning), as in `load_npz`. Other files are ignored.

    Args:
        path: the folder.
        class_names: sub-folder names to use, in label order (default: all, sorted).
        test_fraction: share of each class held out as test data (first layout only).
        seed: seed of that split.
        return_class_names: also return the list of class names.

    Returns:
        `(x_train, y_train), (x_test, y_test)` (plus `class_names` if asked), float32
        `(n, H, W, C)` and int32 labels; the test arrays are empty if there is no
        test data.

    Raises:
        FileNotFoundError: no such folder or class sub-folder.
        ValueError: no classes, an empty class, an unreadable file, NaN/Inf or
            samples of different shapes; the message names the file.

    Example:
    >>> (x, y), _ = load_folder("my_radar/")    # my_radar/push/0001.npy, ...
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"No such data folder: {path}")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction!r}.")
    folders = _class_folders(path)
    split_layout = "train" in folders and "test" in folders
    train_dir = os.path.join(path, "train") if split_layout else path
    if class_names is None:
        class_names = _class_folders(train_dir)
    class_names = list(class_names)
    if not class_names:
        raise ValueError(
            f"{path}: no class sub-folders; put each class's files in its own folder."
        )
    shape = [None, None]  # the first sample's shape and file, for mixed-shape errors
    x_train, y_train = _read_split(train_dir, class_names, shape)
    if split_layout:
        x_test, y_test = _read_split(os.path.join(path, "test"), class_names, shape)
    elif test_fraction > 0:
        rng = np.random.default_rng(seed)
        test = np.zeros(len(y_train), bool)
        for label in range(len(class_names)):
            members = np.flatnonzero(y_train == label)
            count = int(round(test_fraction * len(members)))
            test[rng.permutation(members)[:count]] = True
        x_test, y_test = x_train[test], y_train[test]
        x_train, y_train = x_train[~test], y_train[~test]
    else:
        x_test, y_test = np.zeros((0,) + x_train.shape[1:], np.float32), np.zeros(0, np.int32)
    result = ((x_train, y_train), (x_test, y_test))
    return result + (class_names,) if return_class_names else result
