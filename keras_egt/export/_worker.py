"""Runs one export job in a TensorFlow-backend process (see `exporter.run_in_tensorflow`).

    KERAS_BACKEND=tensorflow python -m keras_egt.export._worker job.json
"""

import json
import sys
import traceback

from keras_egt import atomic


def main(job_path, watch_parent=False):
    from keras_egt.export import _lifetime

    if watch_parent:
        _lifetime.die_with_parent()
        # Die with the parent: it holds our stdin pipe (EOF = it is gone) and the kernel
        # sends SIGTERM on its death (Linux); SIGTERM raises, so the export cleans up.
        _lifetime.watch_parent()
    with open(job_path, encoding="utf-8") as f:
        job = json.load(f)
    with _lifetime.terminate_raises():
        return _run(job)


def _run(job):
    try:
        import keras
        import numpy as np

        if keras.backend.backend() != "tensorflow":
            raise RuntimeError("the export worker must run with KERAS_BACKEND=tensorflow.")
        import keras_egt
        from keras_egt import export

        keras_egt.register_serializables()  # the model's classes, for loading

        model = keras.saving.load_model(job["model"], compile=False)
        arrays = {name: np.load(path) for name, path in job["arrays"].items()}
        value = getattr(export, job["function"])(model, **arrays, **job["kwargs"])
        result = {"value": value}
    except Exception as error:  # reported to the parent process, which re-raises it
        traceback.print_exc()
        result = {"error": str(error), "error_type": type(error).__name__}
    atomic.write_text(job["result"], json.dumps(result))
    return 0 if "value" in result else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], watch_parent=True))
