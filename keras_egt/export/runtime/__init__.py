"""Running an exported int8 cascade: LiteRT and TensorFlow Lite Micro, batch 1.

Needs `ai-edge-litert` or `tflite-micro` (not TensorFlow), so a deploy folder runs on
any Keras backend.

* `int8`: quantize, dequantize and the cascade's decisions on int8 probabilities.
* `arena`: TFLM's arena, measured and probed in a child process.
* `interpreters`: one segment on LiteRT or TFLM; the one door to TFLM.
* `runner`: `load_cascade`, `CascadeRunner`, `format_report`.

Example:
>>> runner = load_cascade("deploy/", runtime="tflm")
>>> labels, exits = runner.predict(x_test)
"""

# The int8 test of a threshold, owned by the exit rule, is part of this API: it is
# what `threshold_int8` in a manifest means.
from keras_egt.exit_rule import int8_threshold
from keras_egt.export.runtime.arena import (
    ARENA_TMP_PATTERN,
    probe_tflm,
    probe_tflm_file,
    tflm_arena_bytes,
)
from keras_egt.export.runtime.int8 import decide_int8, dequantize, quantize
from keras_egt.export.runtime.interpreters import tflm_interpreter
from keras_egt.export.runtime.runner import RUNTIMES, CascadeRunner, format_report, load_cascade

__all__ = [
    "ARENA_TMP_PATTERN",
    "RUNTIMES",
    "CascadeRunner",
    "decide_int8",
    "dequantize",
    "format_report",
    "int8_threshold",
    "load_cascade",
    "probe_tflm",
    "probe_tflm_file",
    "quantize",
    "tflm_arena_bytes",
    "tflm_interpreter",
]
