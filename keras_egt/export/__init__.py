"""Deployment: a trained early-exit model as a split int8 TFLite cascade for microcontrollers.

    egt.export.export_cascade(model, "deploy/", representative_data=x_train[:256], threshold=0.9)
    runner = egt.export.load_cascade("deploy/", runtime="tflm")   # or "litert"
    labels, exits = runner.predict(x_test)
    print(runner.report())
    report = egt.export.run_firmware("deploy/")     # Cortex-M4 firmware, emulated

`export_cascade` needs TensorFlow (on another Keras backend it runs itself in a
TensorFlow-backend subprocess); `load_cascade` needs only `ai-edge-litert` or
`tflite-micro`; `quantization_aware_export` needs `tf-keras` and
`tensorflow-model-optimization`. All come with `pip install keras-egt[deploy]`.
Importing this module imports none of them.
"""

from keras_egt.export.exporter import export_cascade
from keras_egt.export.firmware import FirmwareMismatchError, run_firmware, tflm_library
from keras_egt.export.final_only import FinalOnly, export_final_only, tflm_time_per_sample
from keras_egt.export.qat import quantization_aware_export, quantization_aware_finetune
from keras_egt.export.runtime import (
    CascadeRunner,
    decide_int8,
    format_report,
    int8_threshold,
    load_cascade,
    read_manifest,
)
from keras_egt.export.segments import Segment, build_segments, segment_inputs

__all__ = [
    "CascadeRunner",
    "FirmwareMismatchError",
    "Segment",
    "build_segments",
    "decide_int8",
    "FinalOnly",
    "export_cascade",
    "export_final_only",
    "format_report",
    "int8_threshold",
    "load_cascade",
    "quantization_aware_export",
    "quantization_aware_finetune",
    "read_manifest",
    "run_firmware",
    "segment_inputs",
    "tflm_library",
    "tflm_time_per_sample",
]
