"""Bring-your-own-data loaders: good files load, each kind of bad input names the file."""

import numpy as np
import pytest

import keras_egt as egt
from keras_egt.datasets import load_folder, load_npz


def _arrays(n_train=12, n_test=6, shape=(8, 8, 2), classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.normal(size=(n_train,) + shape).astype("float32"),
        "y_train": np.arange(n_train) % classes,
        "x_test": rng.normal(size=(n_test,) + shape).astype("float32"),
        "y_test": np.arange(n_test) % classes,
    }


def _npz(tmp_path, name="data.npz", **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def test_load_npz_round_trip(tmp_path):
    arrays = _arrays()
    (x, y), (xt, yt) = egt.datasets.load_npz(_npz(tmp_path, **arrays))
    np.testing.assert_array_equal(x, arrays["x_train"])
    assert x.dtype == np.float32 and y.dtype == np.int32 and yt.dtype == np.int32
    assert xt.shape == (6, 8, 8, 2)


def test_load_npz_adds_channel_axis_and_allows_no_test(tmp_path):
    arrays = _arrays(shape=(8, 8))
    del arrays["x_test"], arrays["y_test"]
    (x, y), (xt, yt) = load_npz(_npz(tmp_path, **arrays))
    assert x.shape == (12, 8, 8, 1) and xt.shape == (0, 8, 8, 1) and len(yt) == 0


def _with(**changes):
    arrays = _arrays()
    arrays.update(changes)
    return arrays


@pytest.mark.parametrize(
    "arrays, message",
    [
        (_with(y_train=np.arange(11) % 3), "12 samples but y_train has 11 labels"),
        (_with(x_test=np.full((6, 8, 8, 2), np.nan, "float32")), "NaN/Inf"),
        (_with(x_train=np.where(np.arange(12)[:, None, None, None] == 4, np.inf,
                                _arrays()["x_train"])), "first in sample 4"),
        (_with(y_train=np.arange(12) % 3 - 1), "labels must lie in 0"),
        (_with(y_test=np.arange(6) % 3 + 5), "labels must lie in 0..2"),
        (_with(y_train=np.arange(12) % 3 * 2), r"classes \[1, 3\] have no training samples"),
        (_with(x_test=np.zeros((6, 8, 9, 2), "float32")), "must match"),
        (_with(y_train=np.eye(3)[np.arange(12) % 3]), "1-D array"),
        (_with(y_train=np.arange(12) % 3 + 0.5), "whole numbers"),
        (_with(x_train=np.zeros((12, 8), "float32")), "samples, height, width"),
        ({"x_train": np.zeros((3, 4, 4))}, r"missing arrays \['y_train'\]"),
        ({k: v for k, v in _arrays().items() if k != "y_test"}, r"missing arrays \['y_test'\]"),
    ],
)
def test_load_npz_errors_name_file_and_problem(tmp_path, arrays, message):
    path = _npz(tmp_path, **arrays)
    with pytest.raises(ValueError, match=message) as info:
        load_npz(path)
    assert str(path) in str(info.value)


def test_load_npz_num_classes(tmp_path):
    path = _npz(tmp_path, **_arrays())
    with pytest.raises(ValueError, match="no training samples"):
        load_npz(path, num_classes=4)
    with pytest.raises(ValueError, match="0..1"):
        load_npz(path, num_classes=2)


def test_load_npz_not_a_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_npz(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="bad.npz: not a readable .npz"):
        load_npz(bad)


def _folder(root, classes=("a", "b", "c"), per_class=3, shape=(6, 6)):
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            np.save(root / name / f"{i}.npy", rng.normal(size=shape).astype("float32"))
    return root


def test_load_folder_npy(tmp_path):
    root = _folder(tmp_path / "data")
    (root / "a" / "notes.txt").write_text("ignored")
    (x, y), (xt, yt), names = load_folder(root, return_class_names=True)
    assert x.shape == (9, 6, 6, 1) and list(y) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert names == ["a", "b", "c"] and len(xt) == 0
    (x, y), (xt, yt) = load_folder(root, test_fraction=1 / 3, seed=1)
    assert len(x) == 6 and len(xt) == 3 and sorted(yt) == [0, 1, 2]


def test_load_folder_png(tmp_path):
    import matplotlib.image

    for name in ("push", "pull"):
        (tmp_path / name).mkdir()
        for i in range(2):
            matplotlib.image.imsave(tmp_path / name / f"{i}.png",
                                    np.full((5, 7), 0.5 * i), cmap="gray")
    (x, y), _ = load_folder(tmp_path)
    assert x.shape[:3] == (4, 5, 7) and 0.0 <= x.min() and x.max() <= 1.0
    assert list(y) == [0, 0, 1, 1]  # sorted: pull, push


def test_load_folder_train_test_layout(tmp_path):
    _folder(tmp_path / "train")
    _folder(tmp_path / "test", per_class=1)
    (x, y), (xt, yt) = load_folder(tmp_path)
    assert len(x) == 9 and list(yt) == [0, 1, 2]


def test_load_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="No such data folder"):
        load_folder(tmp_path / "nope")
    with pytest.raises(ValueError, match="no class sub-folders"):
        load_folder(tmp_path)

    root = _folder(tmp_path / "empty")
    (root / "d").mkdir()
    with pytest.raises(ValueError, match=r"d: class 'd' is empty"):
        load_folder(root)

    root = _folder(tmp_path / "mixed")
    np.save(root / "b" / "9.npy", np.zeros((6, 7), "float32"))
    with pytest.raises(ValueError, match=r"9\.npy: shape \(6, 7, 1\) differs"):
        load_folder(root)

    root = _folder(tmp_path / "nan")
    np.save(root / "c" / "0.npy", np.full((6, 6), np.nan, "float32"))
    with pytest.raises(ValueError, match=r"0\.npy: holds NaN or Inf"):
        load_folder(root)

    root = _folder(tmp_path / "broken")
    (root / "a" / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(ValueError, match=r"bad\.npy: unreadable"):
        load_folder(root)


# ------------------------------------------------------------ issue 16: input holes


@pytest.mark.parametrize("label", [10**6, 10**9])
def test_a_huge_label_fails_fast_with_a_short_message(tmp_path, label):
    arrays = _arrays()
    arrays["y_train"] = arrays["y_train"].copy()
    arrays["y_train"][3] = label
    with pytest.raises(ValueError, match="largest training label") as info:
        load_npz(_npz(tmp_path, **arrays))
    assert str(label) in str(info.value) and len(str(info.value)) < 500


def test_many_empty_classes_are_quoted_briefly(tmp_path):
    arrays = _arrays(n_train=12)
    arrays["y_train"] = np.array([0, 11] * 6)  # classes 1..10 empty
    with pytest.raises(ValueError, match=r"classes \[1, 2, 3, 4, 5, 6, 7, 8, 9, 10\] have no"):
        load_npz(_npz(tmp_path, **arrays))
    arrays = _arrays(n_train=24)
    arrays["y_train"] = np.array([0, 11] * 12)
    with pytest.raises(ValueError, match=r"and 1 more"):
        load_npz(_npz(tmp_path, **arrays), num_classes=13)


def test_string_labels_are_refused_clearly(tmp_path):
    arrays = _arrays()
    arrays["y_train"] = np.array(["push", "pull", "wave"] * 4)
    with pytest.raises(ValueError, match="integer class indices.*return_inverse"):
        load_npz(_npz(tmp_path, **arrays))


def test_channels_first_arrays_get_the_transpose(tmp_path):
    arrays = _arrays(shape=(2, 16, 16))
    with pytest.raises(ValueError, match=r"channels-first.*transpose\(0, 2, 3, 1\)"):
        load_npz(_npz(tmp_path, **arrays))
    folder = tmp_path / "cf" / "a"
    folder.mkdir(parents=True)
    np.save(folder / "0.npy", np.zeros((2, 16, 16), np.float32))
    with pytest.raises(ValueError, match=r"0\.npy.*channels-first.*transpose\(1, 2, 0\)"):
        load_folder(tmp_path / "cf")


def test_uint8_loads_as_png_does_from_npz_npy_and_png(tmp_path):
    from PIL import Image  # matplotlib's own dependency

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 8, 8), dtype=np.uint8)
    # PNG: matplotlib reads 8-bit greyscale as float32 in [0, 1] (value / 255).
    png, npy = tmp_path / "png" / "a", tmp_path / "npy" / "a"
    png.mkdir(parents=True)
    npy.mkdir(parents=True)
    for i, image in enumerate(images):
        Image.fromarray(image, mode="L").save(png / f"{i}.png")  # 8-bit greyscale
        np.save(npy / f"{i}.npy", image)
    (x_png, _), _ = load_folder(tmp_path / "png")
    with pytest.warns(UserWarning, match=r"uint8 inputs are scaled to \[0, 1\]"):
        (x_npy, _), _ = load_folder(tmp_path / "npy")
    with pytest.warns(UserWarning, match="uint8"):
        (x_npz, _), _ = load_npz(_npz(tmp_path, x_train=images, y_train=np.zeros(3, int)))
    expected = images[..., None].astype(np.float32) / 255
    np.testing.assert_allclose(x_npy, expected, atol=1e-7)
    np.testing.assert_allclose(x_npz, expected, atol=1e-7)
    np.testing.assert_allclose(x_png, expected, atol=1e-7)
