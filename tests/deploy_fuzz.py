"""Property test of a deploy folder's readers, run in a child process by
tests/test_deploy_integrity.py, so that a crash (a segmentation fault in a runtime)
fails the test instead of killing pytest.

    python tests/deploy_fuzz.py DEPLOY_DIR SCRATCH_DIR EXAMPLES SEED

Each hypothesis example mutates one thing and asserts a named error or a correct
result, never a crash:

* a manifest field (any JSON value, at any path), written with or without the
  manifest's digest recomputed: the readers raise a ValueError / FileNotFoundError /
  RuntimeError, or load a cascade that predicts exactly what the original does (the
  field was not one the cascade uses, e.g. `macs` or the last, unused threshold);
* one byte of a segment file: without its sha256 and the digest recomputed, a named
  error; with them recomputed (a deliberate editor), no crash;
* the inputs given to `predict` and the arrays of an `.npz` data set: a named error
  or a result of the right shape and dtype.

Prints "EXAMPLES n" at the end; exits non-zero on a failed property.
"""

import copy
import hashlib
import json
import os
import shutil
import sys
import warnings

import numpy as np
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from keras_egt.datasets import load_npz
from keras_egt.export import load_cascade
from keras_egt.export.manifest import seal_manifest

NAMED = (ValueError, FileNotFoundError, RuntimeError)
SOURCE, SCRATCH, EXAMPLES, SEED = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

with open(os.path.join(SOURCE, "manifest.json"), encoding="utf-8") as f:
    ORIGINAL = json.load(f)
X = np.random.default_rng(0).normal(size=(4,) + tuple(ORIGINAL["input_shape"])).astype("float32")
REFERENCE = {runtime: load_cascade(SOURCE, runtime=runtime).predict(X)
             for runtime in ("litert", "tflm")}
COUNT = [0]


def paths(value, prefix=()):
    """Every path (tuple of keys / indices) into a JSON value."""
    out = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            out += paths(item, prefix + (key,))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out += paths(item, prefix + (i,))
    return out


PATHS = [p for p in paths(ORIGINAL) if p]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.sampled_from(
        [-129, -128, -1, 0, 1, 2, 4, 100, 127, 128, 129, 1 << 31, 2**63])
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6),
                                                                      children, max_size=3),
    max_leaves=6,
)


def fresh_copy():
    shutil.rmtree(SCRATCH, ignore_errors=True)
    shutil.copytree(SOURCE, SCRATCH)
    return copy.deepcopy(ORIGINAL)


def write_manifest(manifest, reseal):
    if reseal:
        try:
            seal_manifest(manifest)
        except ValueError:
            pass  # not JSON-serialisable canonically (NaN): written as it is
    with open(os.path.join(SCRATCH, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f)
    if reseal:  # the C sources carry the old digests; a resealing editor drops them
        for name in ("egt_manifest.h", "model_data.c", "model_data.h"):
            os.remove(os.path.join(SCRATCH, name))


def load_and_predict(runtime, x=X):
    runner = load_cascade(SCRATCH, runtime=runtime)
    return runner.predict(x)


def assert_named(error):
    assert isinstance(error, NAMED) and len(str(error)) > 10, repr(error)
    assert len(str(error)) < 2000, f"message of {len(str(error))} characters"


def set_path(manifest, path, value, delete):
    target = manifest
    for key in path[:-1]:
        target = target[key]
    if delete:
        del target[path[-1]]
    else:
        target[path[-1]] = value


@st.composite
def cases(draw):
    kind = draw(st.sampled_from(["field", "field", "field", "bytes", "predict", "npz"]))
    runtime = draw(st.sampled_from(["litert", "litert", "tflm"]))
    return kind, runtime, draw(st.data())


@seed(SEED)
@settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=False,
          suppress_health_check=list(HealthCheck))
@given(cases())
def check(case):
    kind, runtime, data = case
    COUNT[0] += 1
    if kind == "field":
        manifest = fresh_copy()
        path = data.draw(st.sampled_from(PATHS))
        delete = data.draw(st.booleans()) and not isinstance(path[-1], int)
        value = data.draw(json_values)
        reseal = data.draw(st.booleans())
        set_path(manifest, path, value, delete)
        write_manifest(manifest, reseal)
        try:
            labels, exits = load_and_predict(runtime)
        except NAMED as error:
            assert_named(error)
            return
        # It loaded: only a field the cascade does not use changed, and the digest matches.
        assert reseal, f"an edit of {path} passed without resealing"
        np.testing.assert_array_equal(labels, REFERENCE[runtime][0], err_msg=str(path))
        np.testing.assert_array_equal(exits, REFERENCE[runtime][1], err_msg=str(path))
    elif kind == "bytes":
        manifest = fresh_copy()
        k = data.draw(st.integers(0, len(manifest["segments"]) - 1))
        seg = manifest["segments"][k]
        path = os.path.join(SCRATCH, seg["file"])
        blob = bytearray(open(path, "rb").read())
        where = data.draw(st.integers(0, len(blob) - 1))
        blob[where] ^= data.draw(st.integers(1, 255))
        if data.draw(st.booleans()):
            blob = blob[: data.draw(st.integers(0, len(blob)))]  # or truncated
        open(path, "wb").write(bytes(blob))
        rehash = data.draw(st.booleans())
        if rehash:
            seg["sha256"] = hashlib.sha256(bytes(blob)).hexdigest()
            seg["flash_bytes"] = len(blob)
            write_manifest(manifest, reseal=True)
        try:
            labels, exits = load_and_predict(runtime)
        except NAMED as error:
            assert_named(error)
            return
        assert rehash, "a modified segment file was not refused"
        assert labels.shape == exits.shape == (len(X),)
    elif kind == "predict":
        fresh_copy()
        x = data.draw(st.one_of(
            st.just(X[:1, :-1]), st.just(X[0]), st.just(X[..., :1]), st.just(X.astype(np.int8)),
            st.just(np.where(X > 1.5, np.nan, X)), st.just(np.full_like(X, np.inf)),
            st.just(X.astype(object)), st.just(np.array(["a"] * 4)), st.just(X * 1e30),
            st.just(np.zeros((0,) + X.shape[1:], np.float32)),
        ))
        try:
            labels, exits = load_and_predict(runtime, x)
        except NAMED as error:
            assert_named(error)
            return
        assert labels.dtype == exits.dtype == np.int64 and labels.shape == exits.shape
        assert np.all((0 <= labels) & (labels < ORIGINAL["num_classes"]))
    else:
        n = data.draw(st.integers(0, 6))
        shape = tuple(data.draw(st.lists(st.integers(1, 5), min_size=1, max_size=4)))
        dtype = data.draw(st.sampled_from(["float32", "uint8", "int64", "float16", "bool"]))
        x = np.ones((n,) + shape, dtype)
        labels = data.draw(st.one_of(
            st.lists(st.integers(-3, 10**12), min_size=n, max_size=n).map(np.array),
            st.lists(st.floats(allow_nan=True), min_size=n, max_size=n).map(np.array),
            st.lists(st.text(max_size=3), min_size=n, max_size=n).map(np.array),
            st.just(np.arange(n) % 2),
        ))
        path = os.path.join(os.path.dirname(SCRATCH), "data.npz")
        np.savez(path, x_train=x, y_train=labels)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                (x_train, y_train), _ = load_npz(path)
        except NAMED as error:
            assert_named(error)
            return
        assert x_train.dtype == np.float32 and x_train.ndim == 4 and len(x_train) == n
        assert y_train.dtype == np.int32 and y_train.min() >= 0


if __name__ == "__main__":
    check()
    print("EXAMPLES", COUNT[0], flush=True)
