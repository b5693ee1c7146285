"""The radar gesture simulator: physics sanity, the returned arrays, determinism, cache.

Pure numpy (the suite runs once per Keras backend; these do not depend on it).
Every test that may write a cache points KERAS_HOME at a temporary folder.
"""

import os
import warnings

import numpy as np
import pytest

from keras_egt.datasets import radar_gestures as rg

CFG = rg.RadarConfig()


@pytest.fixture(autouse=True)
def keras_home(tmp_path, monkeypatch):
    home = tmp_path / "keras-home"
    monkeypatch.setenv("KERAS_HOME", str(home))
    return home


def _point(position, velocity=(0.0, 0.0, 0.0), frames=2):
    """One scatterer, constant over `frames` frames: (positions, velocities, rcs)."""
    pos = np.broadcast_to(np.asarray(position, float), (1, frames, 1, 3)).copy()
    vel = np.broadcast_to(np.asarray(velocity, float), (1, frames, 1, 3)).copy()
    return pos, vel, np.ones((1, 1))


def _moving(direction, speed, distance=0.4):
    u = np.asarray(direction, float) / np.linalg.norm(direction)
    return _point(distance * u, speed * u)


def test_config_derived_quantities():
    assert CFG.num_receivers == 3
    assert CFG.range_resolution_m == pytest.approx(0.0375, rel=1e-3)
    assert CFG.slope_hz_per_s == pytest.approx(4e9 / 32e-6)
    assert CFG.max_velocity_mps == pytest.approx(CFG.wavelength_m / (4 * 500e-6))
    assert len(CFG.doppler_bins_mps()) == 64 and CFG.doppler_bins_mps()[32] == 0.0
    with pytest.raises(ValueError, match="chirps_per_frame"):
        rg.RadarConfig(chirps_per_frame=128)


def test_minimum_jerk_profile():
    s = rg.minimum_jerk(np.array([-1.0, 0.0, 0.5, 1.0, 2.0]))
    np.testing.assert_allclose(s, [0.0, 0.0, 0.5, 1.0, 1.0])


@pytest.mark.parametrize("distance", [0.15, 0.3, 0.6, 0.9])
def test_static_scatterer_peaks_at_its_range_bin(distance):
    cube = rg.if_signal(*_point((0.0, 0.0, distance)), CFG)
    rd = rg.range_doppler(cube, CFG, mti=False)
    profile = (np.abs(rd) ** 2).sum(axis=(0, 1, 2, 3))
    assert np.argmax(profile) == round(distance / CFG.range_resolution_m)


def test_mti_removes_a_static_scatterer():
    cube = rg.if_signal(*_point((0.0, 0.0, 0.3)), CFG)
    static = np.abs(rg.range_doppler(cube, CFG, mti=False)).max()
    assert np.abs(rg.range_doppler(cube, CFG, mti=True)).max() < 1e-3 * static


@pytest.mark.parametrize("speed", [-1.2, -0.5, 0.5, 1.2])
def test_moving_scatterer_peaks_at_its_doppler_bin(speed):
    # Positive = receding (pull), negative = approaching (push).
    cube = rg.if_signal(*_moving((0.0, 0.0, 1.0), speed), CFG)
    doppler = rg.doppler_time_map(rg.range_doppler(cube, CFG))[0].sum(axis=0)
    expected = 32 + speed / (CFG.wavelength_m / (2 * 64 * CFG.chirp_repetition_s))
    assert abs(np.argmax(doppler) - expected) <= 1
    assert np.sign(np.argmax(doppler) - 32) == np.sign(speed)


def test_push_and_pull_give_opposite_doppler():
    maps = []
    for speed in (-0.8, 0.8):
        cube = rg.if_signal(*_moving((0.0, 0.0, 1.0), speed), CFG)
        maps.append(rg.doppler_time_map(rg.range_doppler(cube, CFG))[0].sum(axis=0))
    np.testing.assert_allclose(maps[0], maps[1][::-1][np.r_[63, 0:63]], rtol=0.05, atol=1e-9 * maps[0].max())


@pytest.mark.parametrize("degrees", [-40.0, -15.0, 0.0, 25.0])
def test_scatterer_at_azimuth_shows_at_its_angle_bin(degrees):
    theta = np.deg2rad(degrees)
    cube = rg.if_signal(*_moving((np.sin(theta), 0.0, np.cos(theta)), 0.6), CFG)
    angle = rg.angle_time_map(rg.range_doppler(cube, CFG))[0].sum(axis=0)
    centres = rg.angle_bins(32)
    assert abs(centres[np.argmax(angle[:32])] - np.sin(theta)) <= 1.0 / 32 + 1e-9
    assert abs(centres[np.argmax(angle[32:])]) <= 1.0 / 32 + 1e-9  # elevation 0


def test_scatterer_at_elevation_shows_in_the_elevation_half():
    phi = np.deg2rad(30.0)
    cube = rg.if_signal(*_moving((0.0, np.sin(phi), np.cos(phi)), 0.6), CFG)
    angle = rg.angle_time_map(rg.range_doppler(cube, CFG))[0].sum(axis=0)
    assert abs(rg.angle_bins(32)[np.argmax(angle[32:])] - 0.5) <= 1.0 / 32 + 1e-9


def test_noise_sets_the_snr_of_the_range_profile():
    pos, vel, rcs = _point((0.0, 0.0, 0.3), frames=16)
    amplitude2 = 1.0 / 0.3**4
    window = np.hanning(66)[1:-1]
    snr_db = 10.0
    noise_var = amplitude2 * window.sum() ** 2 / (4 * (window**2).sum() * 10 ** (snr_db / 10))
    cube = rg.if_signal(pos, vel, rcs, CFG, noise_std=np.sqrt(noise_var),
                        rng=np.random.default_rng(0))
    spectrum = rg.range_spectrum(cube, CFG, mti=False)
    power = (np.abs(spectrum) ** 2).mean(axis=(0, 1, 2, 3))
    measured = 10 * np.log10(power[8] / np.median(power[16:]))
    assert measured == pytest.approx(snr_db, abs=1.0)


def test_fast_maps_match_the_reference_pipeline():
    users = rg._users(0, "train", 2)
    rng = np.random.default_rng([0, 11, 0, 0])
    pos, vel, rcs, phases, std = rg._scene(2, users[0], rng, CFG, (20.0, 20.0), 0.0)
    cube = rg.if_signal(pos[None], vel[None], rcs[None], CFG, phases[None], 0.0)
    fast = rg.maps_from_cube(cube, CFG)
    rd = rg.range_doppler(cube, CFG)
    reference = np.stack([rg.normalize_map(rg.doppler_time_map(rd)),
                          rg.normalize_map(rg.angle_time_map(rd))], axis=-1)
    assert np.mean(np.abs(fast.astype(int) - reference.astype(int)) > 1) < 0.01


def test_load_data_shapes_dtypes_balance():
    (x_train, y_train), (x_test, y_test) = rg.load_data(num_train=20, num_test=11, cache=False)
    assert x_train.shape == (20, 64, 64, 2) and x_test.shape == (11, 64, 64, 2)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int32
    assert 0.0 <= x_train.min() and x_train.max() <= 1.0
    assert np.all(x_train.reshape(20, -1).max(axis=1) == 1.0)  # per-sample scaling
    counts = np.bincount(y_train, minlength=9)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 20
    assert set(np.unique(y_test)) <= set(range(9))
    assert len(rg.CLASS_NAMES) == 9 and len(set(rg.CLASS_NAMES)) == 9


def test_channels_option():
    (x, _), _ = rg.load_data(num_train=3, num_test=1, channels=("doppler", "angle", "range"),
                             cache=False)
    assert x.shape == (3, 64, 64, 3)
    (d, _), _ = rg.load_data(num_train=3, num_test=1, channels=("doppler",), cache=False)
    np.testing.assert_array_equal(d[..., 0], x[..., 0])


def test_deterministic_and_seed_dependent():
    a = rg.load_data(num_train=9, num_test=9, seed=3, cache=False)
    b = rg.load_data(num_train=9, num_test=9, seed=3, cache=False)
    c = rg.load_data(num_train=9, num_test=9, seed=4, cache=False)
    for u, v in zip((a[0][0], a[0][1], a[1][0], a[1][1]), (b[0][0], b[0][1], b[1][0], b[1][1])):
        assert u.tobytes() == v.tobytes()
    assert not np.array_equal(a[0][0], c[0][0])
    # Batching does not change a sample.
    users = rg._users(3, "train", 2)
    labels, chosen = np.arange(5), [users[i % 2] for i in range(5)]
    np.testing.assert_array_equal(rg.simulate(labels, chosen, seed=3, batch_size=2),
                                  rg.simulate(labels, chosen, seed=3, batch_size=5))


def test_test_set_independent_of_num_train():
    _, (x1, y1) = rg.load_data(num_train=3, num_test=5, cache=False)
    _, (x2, y2) = rg.load_data(num_train=7, num_test=5, cache=False)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)


def test_user_ids_come_with_the_same_arrays():
    plain = rg.load_data(num_train=12, num_test=6, num_train_users=4, num_test_users=3)
    (x, y, users), (x_t, y_t, users_t) = rg.load_data(
        num_train=12, num_test=6, num_train_users=4, num_test_users=3, return_users=True)
    np.testing.assert_array_equal(x, plain[0][0])
    np.testing.assert_array_equal(y_t, plain[1][1])
    assert users.dtype == np.int32 and users.shape == (12,) and users_t.shape == (6,)
    assert set(users) <= set(range(4)) and set(users_t) <= set(range(3))
    # The ids are the users that simulated each sample: re-simulating one sample from
    # its user dict reproduces it.
    people = rg._users(0, "train", 4)
    levels = rg.simulate(y[:1], [people[users[0]]], seed=0, split="train")
    np.testing.assert_array_equal(levels.astype(np.float32) / 255, x[:1])


def test_calibration_users_are_fresh_and_balanced(keras_home):
    x, y, users = rg.load_calibration_data(num_users=3, samples_per_user=9)
    assert x.shape == (27, 64, 64, 2) and y.dtype == np.int32
    np.testing.assert_array_equal(users, np.repeat(np.arange(3), 9))
    for u in range(3):  # every user performs each gesture once
        assert sorted(y[users == u]) == list(range(9))
    # More users only add samples; the cache returns the same arrays.
    more = rg.load_calibration_data(num_users=4, samples_per_user=9, cache=False)
    np.testing.assert_array_equal(more[0][:27], x)
    again = rg.load_calibration_data(num_users=3, samples_per_user=9)
    np.testing.assert_array_equal(again[0], x)
    assert list((keras_home / "datasets" / "keras_egt").glob("radar_calibration-*.npz"))
    # Other people than the training and test users.
    for split in ("train", "test"):
        assert rg._users(0, "calibration", 1)[0] != rg._users(0, split, 1)[0]
    with pytest.raises(ValueError, match="num_users"):
        rg.load_calibration_data(num_users=0)
    with pytest.raises(ValueError, match="samples_per_user"):
        rg.load_calibration_data(samples_per_user=1.5)


def _cache_files(home):
    folder = home / "datasets" / "keras_egt"
    return sorted(folder.glob("radar_gestures-*.npz")) if folder.exists() else []


def test_cache_hit_does_not_regenerate(keras_home, monkeypatch):
    first = rg.load_data(num_train=9, num_test=9)
    (path,) = _cache_files(keras_home)
    mtime = os.stat(path).st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("the generator ran despite a cached set")

    monkeypatch.setattr(rg, "_split", fail)
    second = rg.load_data(num_train=9, num_test=9)
    assert os.stat(path).st_mtime_ns == mtime
    np.testing.assert_array_equal(first[0][0], second[0][0])
    np.testing.assert_array_equal(first[1][1], second[1][1])
    # Other parameters are another file.
    monkeypatch.undo()
    monkeypatch.setenv("KERAS_HOME", str(keras_home))
    rg.load_data(num_train=9, num_test=9, snr_db=(10, 20))
    assert len(_cache_files(keras_home)) == 2
    assert not list((keras_home / "datasets" / "keras_egt").glob(".tmp-*"))


def _corrupt_truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _corrupt_garbage(path):
    path.write_bytes(b"definitely not an npz file" * 100)


def _corrupt_checksum(path):
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["x_train"] = arrays["x_train"].copy()
    arrays["x_train"].flat[0] ^= 1
    np.savez(path, **arrays)


@pytest.mark.parametrize("corrupt", [_corrupt_truncate, _corrupt_garbage, _corrupt_checksum])
def test_corrupted_cache_is_detected_and_regenerated(keras_home, corrupt):
    first = rg.load_data(num_train=9, num_test=9)
    (path,) = _cache_files(keras_home)
    corrupt(path)
    with pytest.warns(UserWarning, match="corrupted"):
        second = rg.load_data(num_train=9, num_test=9)
    np.testing.assert_array_equal(first[0][0], second[0][0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # repaired: no warning the third time
        rg.load_data(num_train=9, num_test=9)


def test_cache_respects_keras_home_and_can_be_disabled(keras_home):
    assert rg.cache_dir() == os.path.join(str(keras_home), "datasets", "keras_egt")
    rg.load_data(num_train=2, num_test=2, cache=False)
    assert _cache_files(keras_home) == []


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_train": 0}, "num_train must be an integer >= 1"),
        ({"num_test": -5}, "num_test must be an integer >= 1"),
        ({"num_train": 2.5}, "num_train"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"snr_db": (25, 5)}, "reversed"),
        ({"snr_db": (5, float("nan"))}, "finite"),
        ({"snr_db": "loud"}, "snr_db must be"),
        ({"snr_db": (-50, 10)}, r"\[-30, 80\]"),
        ({"num_train_users": 0}, "num_train_users"),
        ({"sloppy_fraction": 1.5}, "sloppy_fraction"),
        ({"channels": ("doppler", "sonar")}, "channels must be"),
        ({"channels": ()}, "channels must be"),
        ({"config": {"bandwidth_hz": 1e9}}, "RadarConfig"),
    ],
)
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        rg.load_data(**kwargs)


def test_cli_data_show(tmp_path, capsys):
    from keras_egt.cli import main

    out = tmp_path / "show.png"
    code = main(["data", "show", "--output", str(out), "--num-train", "9", "--num-test", "1"])
    assert code == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(out) in capsys.readouterr().out


def test_cli_data_show_bad_input(tmp_path, capsys):
    from keras_egt.cli import main

    assert main(["data", "show", "--npz", str(tmp_path / "missing.npz")]) == 2
    assert main(["data", "show", "--num-train", "0", "--output", str(tmp_path / "a.png")]) == 2
    err = capsys.readouterr().err
    assert "missing.npz" in err and "num_train" in err


def _forge_labels(path):
    """An attacker's cache: labels flipped, the checksum recomputed, so it looks intact."""
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    forged = {k: arrays[k] for k in rg._ARRAY_KEYS}
    forged["y_train"] = (forged["y_train"] + 1) % 9
    np.savez(path, sha256=np.array(rg._checksum(forged)), key=arrays["key"], **forged)


@pytest.mark.parametrize("who", ["other_user", "group_writable"])
def test_a_forged_cache_in_a_shared_folder_is_not_trusted(keras_home, who):
    # The /tmp/.keras fallback: a folder anyone can write. The checksum alone can be
    # recomputed by whoever forged the file, so ownership and mode must decide.
    keras_home.mkdir()
    os.chmod(keras_home, 0o1777)
    first = rg.load_data(num_train=9, num_test=9)
    (path,) = _cache_files(keras_home)
    assert not os.stat(path).st_mode & 0o022  # written so that only its owner can write it
    _forge_labels(path)
    if who == "other_user":
        if os.getuid() != 0:
            pytest.skip("needs root to give the file to another user")
        os.chown(path, 65534, 65534)
    else:
        os.chmod(path, 0o666)
    with pytest.warns(UserWarning, match=r"not trusted \((it is owned by user id 65534|others "
                                         r"can write it)"):
        second = rg.load_data(num_train=9, num_test=9)
    np.testing.assert_array_equal(first[0][1], second[0][1])  # the true labels, regenerated
    assert os.stat(path).st_uid == os.getuid()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # replaced by a trusted file: no warning next time
        rg.load_data(num_train=9, num_test=9)


def test_a_cache_in_a_private_folder_keeps_its_mode(keras_home, tmp_path):
    # Not shared (no world-writable folder above it): a group-writable cache of the
    # user's own (umask 002) is trusted as before.
    if rg._shared(keras_home):
        pytest.skip("the temporary folder lies under a world-writable one")
    rg.load_data(num_train=9, num_test=9)
    (path,) = _cache_files(keras_home)
    os.chmod(path, 0o664)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rg.load_data(num_train=9, num_test=9)


def test_simulation_shows_progress_over_every_sample(monkeypatch):
    import keras

    bars = []

    class Recorded(keras.utils.Progbar):
        def __init__(self, target, *args, **kwargs):
            super().__init__(target, *args, verbose=0, **{k: v for k, v in kwargs.items()
                                                          if k != "verbose"})
            bars.append(self)

    monkeypatch.setattr(keras.utils, "Progbar", Recorded)
    rg.load_data(num_train=18, num_test=9, cache=False)
    assert bars == []  # quiet by default
    rg.load_data(num_train=18, num_test=9, cache=False, verbose=1)
    rg.load_calibration_data(num_users=2, samples_per_user=9, cache=False, verbose=1)
    assert [(bar.target, bar._seen_so_far) for bar in bars] == [(27, 27), (18, 18)]
