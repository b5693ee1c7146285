"""Lazy imports of the deployment stack, with one clear error when a piece is missing."""

import contextlib
import importlib
import os
import sys
import tempfile

_PACKAGES = {
    "tensorflow": "tensorflow",
    "ai_edge_litert.interpreter": "ai-edge-litert",
    "tflite_micro.python.tflite_micro.runtime": "tflite-micro",
    "tf_keras": "tf-keras",
    "tensorflow_model_optimization": "tensorflow-model-optimization",
}


def require(module, purpose):
    """Imports `module`, or raises an ImportError saying what needs it and how to get it.

    Args:
        module: a key of `_PACKAGES`, e.g. `"tensorflow"`.
        purpose: what needs it, for the message ("int8 export").

    Returns:
        The imported module.
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        package = _PACKAGES.get(module, module.split(".")[0])
        raise ImportError(
            f"{purpose} needs the {package!r} package, which could not be imported "
            f"({error}). Install the deployment extras: pip install keras-egt[deploy]"
        ) from error


def tensorflow(purpose="the int8 export"):
    return require("tensorflow", purpose)


@contextlib.contextmanager
def captured_native_output(keep=None):
    """Redirects the process's C-level stdout and stderr (file descriptors 1 and 2).

    The TFLite converter, calibrator and the TFLM allocator report through C++
    streams that Python's `sys.stderr` does not see; this collects them so that
    normal runs stay quiet and failures can quote them.

    Args:
        keep: a list; the captured text is appended to it when the block ends.
    """
    saved = []
    with tempfile.TemporaryFile() as sink:
        for fd in (1, 2):
            stream = sys.stdout if fd == 1 else sys.stderr
            try:
                stream.flush()
            except (AttributeError, ValueError):
                pass
            saved.append(os.dup(fd))
            os.dup2(sink.fileno(), fd)
        try:
            yield
        finally:
            for fd, copy in zip((1, 2), saved):
                os.dup2(copy, fd)
                os.close(copy)
            if keep is not None:
                sink.seek(0)
                keep.append(sink.read().decode("utf-8", "replace"))
