"""keras-egt: Explanation-Guided Training of early-exit CNNs, and their deployment to MCUs.

Submodules and public names load on first use (PEP 562), so that `keras-egt --help`
and the command line's argument errors answer without importing Keras. Where Keras is
already imported, `import keras_egt` registers the package's serialisable classes at
once, so `keras.saving.load_model("egt.keras")` works right after it.
"""

import importlib
import sys

__version__ = "0.1.0"

_SUBMODULES = ("atomic", "calibration", "callbacks", "cascade", "cnn", "compiled_cascade", "costs", "datasets",
               "evaluation", "explanations", "export", "layers", "losses", "metrics", "model", "plots", "recipe",
               "stages", "tuning")

# Public name -> the module that defines it.
_NAMES = {
    "Cascade": "cascade",
    "calibrate_thresholds": "calibration",
    "CalibratedThresholds": "calibration",
    "evaluate": "evaluation",
    "ExplanationQuality": "explanations",
    "explanation_quality": "explanations",
    "consistency_terms": "losses",
    "weighted_consistency": "losses",
    "ConvBlock": "layers",
    "ExitHead": "layers",
    "SpatialAttention": "layers",
    "spatial_softmax": "layers",
    "attention_consistency": "losses",
    "consistency_loss": "losses",
    "exit_consistencies": "losses",
    "EarlyExitModel": "model",
    "WIDTH_PRESETS": "cnn",
    "EarlyExitCNN": "cnn",
    "CompiledCascade": "compiled_cascade",
    "split_backbone": "stages",
    "valid_cuts": "stages",
}

__all__ = sorted(_SUBMODULES + tuple(_NAMES))


def __getattr__(name):
    if name in _SUBMODULES:
        module = importlib.import_module(f"keras_egt.{name}")
    elif name in _NAMES:
        module = getattr(importlib.import_module(f"keras_egt.{_NAMES[name]}"), name)
    else:
        raise AttributeError(f"module 'keras_egt' has no attribute {name!r}")
    globals()[name] = module
    return module


def __dir__():
    return sorted(set(globals()) | set(__all__))


def _register_serializables():
    """Imports the modules whose classes `keras.saving.load_model` must know."""
    for name in ("layers", "model", "cnn", "callbacks"):
        importlib.import_module(f"keras_egt.{name}")


if "keras" in sys.modules:
    _register_serializables()
