"""Deployment: a trained EarlyExitCNN as a split int8 TFLite cascade for microcontrollers.

    egt.export.export_cascade(model, "deploy/", representative_data=x_train[:256], threshold=0.9)
    runner = egt.export.load_cascade("deploy/", runtime="tflm")   # or "litert"
    labels, exits = runner.predict(x_test)
    print(runner.report())

`export_cascade` needs TensorFlow (on another Keras backend it runs itself in a
TensorFlow-backend subprocess); `load_cascade` needs only `ai-edge-litert` or
`tflite-micro`; `quantization_aware_export` needs `tf-keras` and
`tensorflow-model-optimization`. All come with `pip install keras-egt[deploy]`.
Importing this module imports none of them, nor Keras: names load on first use.
"""

import importlib

# Public name -> the module that defines it; loaded on first use (PEP 562), so that
# running a deploy folder (load_cascade) imports neither Keras nor TensorFlow.
_NAMES = {
    "CascadeRunner": "runtime",
    "Segment": "segments",
    "build_segments": "segments",
    "decide_int8": "runtime",
    "export_cascade": "exporter",
    "format_report": "runtime",
    "int8_threshold": "runtime",
    "load_cascade": "runtime",
    "quantization_aware_export": "qat",
    "quantization_aware_finetune": "qat",
    "read_manifest": "manifest",
    "segment_inputs": "segments",
    "FirmwareMismatchError": "firmware",
    "run_firmware": "firmware",
    "tflm_library": "firmware",
    "resolver_methods": "firmware",
    "FinalOnly": "final_only",
    "export_final_only": "final_only",
    "tflm_time_per_sample": "final_only",
}
_SUBMODULES = ("c_sources", "convert", "exporter", "final_only", "firmware", "manifest", "qat",
               "runtime", "segments")

__all__ = sorted(_NAMES)


def __getattr__(name):
    if name in _NAMES:
        value = getattr(importlib.import_module(f"keras_egt.export.{_NAMES[name]}"), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"keras_egt.export.{name}")
    else:
        raise AttributeError(f"module 'keras_egt.export' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__) | set(_SUBMODULES))
