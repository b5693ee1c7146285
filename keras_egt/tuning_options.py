"""The tuner's defaults and objectives, without Keras: the command line builds its
options from these before any heavy import (see `keras_egt.tuning`)."""

# The paper's sweep, with the baseline it is compared against.
DEFAULT_LAMBDAS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)

# Short name -> (metric logged by every trial, direction).
OBJECTIVES = {
    "score": ("val_score", "max"),
    "consistency": ("val_consistency", "max"),
    "cascade_accuracy": ("val_cascade_accuracy", "max"),
    "final_accuracy": ("val_final_accuracy", "max"),
    "cascade_speedup": ("val_cascade_speedup", "max"),
    # Logged by keras_egt.arch_search.BudgetedHyperModel only: the MAC speedup of a
    # trial at or above the accuracy floor, a negative shortfall below it.
    "budget_speedup": ("val_budget_speedup", "max"),
}

# keras_egt.arch_search.BudgetedHyperModel's defaults, for the command line too.
DEFAULT_ARCH_LAMBDAS = (0.3,)
DEFAULT_ACCURACY_FLOOR = 0.9
