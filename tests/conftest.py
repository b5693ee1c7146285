"""Shared test setup.

The suite runs once per Keras backend (`KERAS_BACKEND=tensorflow|jax|torch`): the
backend is fixed per process. Tests of TensorFlow-only code (export, LiteRT, TFLM,
tfmot) are marked `tensorflow_only` and run in the TensorFlow pass only.
"""

import os

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import pytest  # noqa: E402

from kit import BACKEND, blob_task  # noqa: E402


def pytest_report_header(config):
    return f"keras {keras.__version__}, backend: {BACKEND}"


def pytest_collection_modifyitems(config, items):
    if BACKEND == "tensorflow":
        return
    skip = pytest.mark.skip(reason="TensorFlow-only; runs in the KERAS_BACKEND=tensorflow pass")
    for item in items:
        if "tensorflow_only" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1234)
    yield
    keras.backend.clear_session()


@pytest.fixture
def blobs():
    return blob_task()


@pytest.fixture
def drawn(monkeypatch):
    """The matplotlib figures `keras_egt.plots` writes, captured as they are saved.

    A closed figure keeps its axes and artists, so a test can read what was drawn.
    """
    from keras_egt import plots

    figures = []
    save = plots._save

    def capture(fig, path):
        figures.append(fig)
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", capture)
    return figures
