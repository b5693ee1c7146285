"""keras-egt: Explanation-Guided Training of early-exit CNNs, and their deployment to MCUs.

Submodules and public names load on first use (PEP 562), so that `keras-egt --help`
and the command line's argument errors answer without importing Keras. Where Keras is
already imported, `import keras_egt` registers the package's serialisable classes at
once, so `keras.saving.load_model("egt.keras")` works right after it.
"""

import importlib
import sys

__version__ = "0.1.0"

_SUBMODULES = ("arch_search", "atomic", "budget", "calibration", "callbacks", "cascade", "cnn", "compiled_cascade", "costs", "datasets", "defaults", "exit_rule",
               "evaluation", "explanations", "export", "layers", "losses", "mcu", "mcu_stages", "metrics", "model", "plots", "recipe",
               "stages", "timing", "tuning")

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
    "EarlyExitMCU": "mcu",
    "MCU_PRESETS": "mcu",
    "estimate_deployment": "budget",
    "BudgetedHyperModel": "arch_search",
    "MCUSearchSpace": "arch_search",
    "budget_results": "arch_search",
    "split_backbone": "stages",
    "valid_cuts": "stages",
}

__all__ = sorted(_SUBMODULES + tuple(_NAMES) + ("register_serializables",))


def __getattr__(name):
    if name in _SUBMODULES:
        value = importlib.import_module(f"keras_egt.{name}")
    elif name in _NAMES:
        value = getattr(importlib.import_module(f"keras_egt.{_NAMES[name]}"), name)
        # A public name means Keras is in use: register the saved models' classes
        # too, so `keras.saving.load_model` finds them.
        register_serializables()
    else:
        raise AttributeError(f"module 'keras_egt' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


_registered = False


def register_serializables():
    """Imports the modules whose classes `keras.saving.load_model` must know.

    `import keras_egt` does this at once when Keras is already imported, and the
    first public name used (`egt.EarlyExitCNN`, `egt.evaluate`, ...) does it too;
    call it yourself before `keras.saving.load_model` if you import keras_egt before
    Keras and use nothing from it first.
    """
    global _registered
    if _registered:
        return
    _registered = True
    for name in ("layers", "model", "cnn", "mcu", "callbacks", "export.segments"):
        importlib.import_module(f"keras_egt.{name}")


if "keras" in sys.modules:
    register_serializables()
