"""Budgeted architecture search: the fastest `EarlyExitMCU` that fits a part and is accurate.

A microcontroller fixes two numbers before any training: the flash that holds the
int8 segments and the RAM that holds the largest segment's TFLM arena.
`BudgetedHyperModel` is an `EGTHyperModel` whose search space is the `EarlyExitMCU`
family (`MCUSearchSpace`: candidate blocks per stage, and the exit heads' attention
width) besides λ, and which turns the budget and an accuracy floor into the search:

* an architecture far beyond any microcontroller (`stages='c100000 | c8'`, a typo
  that would end in an out-of-memory error after minutes) is refused when the
  hypermodel is made, in one line naming its figures (`keras_egt.budget.
  check_architecture`, applied to every candidate), and a trial whose combination
  of candidates goes past the same limits is rejected untrained as below.
* `fit` estimates the trial's int8 flash and arena (`keras_egt.budget`) from the
  model `build` made and rejects it, before any training, with
  `keras_tuner.errors.FailedTrialError` when either is over its budget. (Not in
  `build`: KerasTuner also builds the space's default architecture when a tuner is
  created, which must work whatever the budget.) KerasTuner marks the trial FAILED
  and goes on, but stops a search after `max_consecutive_failed_trials` failures in
  a row (3 by default): pass `max_consecutive_failed_trials=None` to the tuner, so
  that a run of rejections cannot end the search. Rejected trials count toward
  `max_trials`; each costs a model build, not a training. KerasTuner prints each
  failed trial's traceback.
* every epoch logs, besides `CascadeMetrics`' figures, `val_flash_bytes` and
  `val_arena_bytes` (the estimates) and `val_budget_speedup` (see `budget_score`):
  the validation cascade's MAC speedup when its accuracy reaches the floor, else
  the (negative) shortfall, so every trial that meets the floor outranks every
  one that does not. Rank trials with `objective("budget_speedup")`.

`budget_results(tuner, validation_data)` reads the search back: one row per
trained trial (architecture, accuracy, MAC and wall-clock speedup, flash, arena,
floor met, Pareto front) and the rejected trials with their estimates.
"""

import math

import keras
import keras_tuner as kt
import numpy as np

from keras_egt import budget, evaluation, tuning
from keras_egt.mcu import EarlyExitMCU, mcu_backbone, resolve_stages
from keras_egt.tuning_options import DEFAULT_ACCURACY_FLOOR, DEFAULT_ARCH_LAMBDAS

__all__ = [
    "DEFAULT_HEAD_CHANNELS",
    "DEFAULT_STAGE_CANDIDATES",
    "BudgetMetrics",
    "BudgetResults",
    "BudgetedHyperModel",
    "MCUSearchSpace",
    "budget_results",
    "budget_score",
]

# Around the "mcu" preset: stage 1 reaches a coarse map cheaply at three widths,
# the later stages trade one wide conv against a narrower one or two blocks.
DEFAULT_STAGE_CANDIDATES = (
    ("c8p s16p s32p", "c8p s12p s24p", "c8p s24p s48p"),
    ("c64", "c48", "c48 c48"),
    ("c96", "c64", "c64 c64"),
    ("c96p", "c64p", "c128p"),
)
DEFAULT_HEAD_CHANNELS = (8, 16)

# In every rejected trial's message: how `budget_results` tells them from failures.
_REJECTED = "rejected before training"


def _pools(blocks):
    return sum(block.endswith("p") for block in blocks.split())


class MCUSearchSpace:
    """The `EarlyExitMCU` architectures a budgeted search draws from.

    Each stage is a KerasTuner `Choice` among block strings (see `keras_egt.mcu`),
    named `stage_1` ... `stage_K`, and the exit heads' attention width is a `Choice`
    named `attention_hidden_channels`. K, the number of stages (exits), is fixed by
    the number of candidate lists.

    Args:
        stages: one sequence of candidates per stage; a candidate is a block string
            (`"c8p s16p s32p"`) or a sequence of blocks (`["c8p", "s16p"]`). The
            default: 4 stages around the `"mcu"` preset (`DEFAULT_STAGE_CANDIDATES`).
        attention_hidden_channels: candidate hidden widths of the heads' attention
            modules (ints >= 1; default `DEFAULT_HEAD_CHANNELS`).

    Example:
    >>> space = MCUSearchSpace(stages=[["c8p s16p", "c8p s32p"], ["c32p"], ["c64", "c48 c48"]],
    ...                        attention_hidden_channels=[8])
    >>> space.size
    4
    """

    def __init__(self, stages=DEFAULT_STAGE_CANDIDATES,
                 attention_hidden_channels=DEFAULT_HEAD_CHANNELS):
        if isinstance(stages, str) or not hasattr(stages, "__iter__"):
            raise ValueError(
                "stages must be one list of candidates per stage, e.g. "
                f"[['c8p s16p s32p', 'c8p s12p s24p'], ['c64', 'c48'], ['c96p']]. Received: "
                f"{stages!r}."
            )
        candidates = []
        for k, options in enumerate(stages, start=1):
            if isinstance(options, str):
                raise ValueError(
                    f"Stage {k}'s candidates must be a list of block strings, got the "
                    f"string {options!r}; write [{options!r}] for a single candidate."
                )
            texts = [" ".join(o.split()) if isinstance(o, str) else " ".join(map(str, o))
                     for o in options]
            candidates.append(self._checked(f"stage {k}", texts))
        if len(candidates) < 2:
            raise ValueError(
                f"A search space needs at least 2 stages (one exit after each). Received "
                f"{len(candidates)}."
            )
        for k, texts in enumerate(candidates):
            for text in texts:
                # The blocks' own checks, with this candidate among the first of the others.
                resolve_stages([c[0].split() for c in candidates[:k]] + [text.split()]
                               + [c[0].split() for c in candidates[k + 1:]])
        self.stages = tuple(tuple(texts) for texts in candidates)
        heads = []
        for value in attention_hidden_channels:
            if isinstance(value, bool) or not float(value).is_integer() or value < 1:
                raise ValueError(
                    f"attention_hidden_channels candidates must be whole numbers >= 1. "
                    f"Received: {value!r}."
                )
            heads.append(int(value))
        self.attention_hidden_channels = tuple(
            self._checked("attention_hidden_channels", heads))

    @staticmethod
    def _checked(name, values):
        if not values:
            raise ValueError(f"The search space is empty: {name} holds no candidate.")
        if len(set(values)) != len(values):
            raise ValueError(f"{name} holds a candidate twice: {list(values)}.")
        return list(values)

    @property
    def num_stages(self):
        """K: the number of stages, and of exits."""
        return len(self.stages)

    @property
    def size(self):
        """How many architectures the space holds."""
        return math.prod(len(s) for s in self.stages) * len(self.attention_hidden_channels)

    def check_input_shape(self, input_shape):
        """Raises `ValueError` unless every architecture's poolings fit `input_shape`.

        Also refuses, before any model is built, a candidate whose architecture is
        far beyond any microcontroller (`keras_egt.budget.check_architecture`, with
        the other stages at their first candidates), such as `'c100000'`.
        """
        pools = sum(max(_pools(c) for c in options) for options in self.stages)
        if min(int(d) for d in tuple(input_shape)[:2]) < 2**pools:
            deepest = " | ".join(max(options, key=_pools) for options in self.stages)
            raise ValueError(
                f"input_shape {tuple(input_shape)} is too small for the search space: its "
                f"deepest architecture ({deepest}) pools {pools} times and needs height "
                f"and width >= {2**pools}. Drop a 'p' from a candidate or resize the inputs."
            )
        firsts = [options[0] for options in self.stages]
        for k, options in enumerate(self.stages):
            for text in options:
                budget.check_architecture(" | ".join(firsts[:k] + [text] + firsts[k + 1:]),
                                          input_shape)

    def declare(self, hp):
        """Registers (or reads) the architecture hyperparameters on `hp`.

        Args:
            hp: a `keras_tuner.HyperParameters`.

        Returns:
            A dict: `stages` (a `"c8p s16p s32p | c64 | ..."` string for
            `EarlyExitMCU`) and `attention_hidden_channels` (an int).
        """
        blocks = [hp.Choice(f"stage_{k}", list(options))
                  for k, options in enumerate(self.stages, start=1)]
        return {
            "stages": " | ".join(blocks),
            "attention_hidden_channels": hp.Choice(
                "attention_hidden_channels", list(self.attention_hidden_channels)),
        }


def budget_score(cascade_accuracy, cascade_speedup, accuracy_floor):
    """A trial's `val_budget_speedup`: its MAC speedup if accurate enough, else its shortfall.

    The MAC speedup of a cascade is > 0 and the shortfall
    `cascade_accuracy - accuracy_floor` is < 0, so a trial that meets the floor
    always outranks one that does not, and among those that do not the closer to
    the floor ranks higher.

    Args:
        cascade_accuracy: the validation cascade's accuracy, in [0, 1].
        cascade_speedup: its MAC speedup over the final exit alone.
        accuracy_floor: the accuracy a trial must reach, in [0, 1].

    Returns:
        `cascade_speedup` if `cascade_accuracy >= accuracy_floor`, else
        `cascade_accuracy - accuracy_floor`.

    Example:
    >>> budget_score(0.96, 2.5, 0.95)
    2.5
    >>> budget_score(0.90, 3.0, 0.95)       # 0.90 - 0.95, up to rounding
    -0.04999999999999993
    """
    accuracy, floor = float(cascade_accuracy), float(accuracy_floor)
    return float(cascade_speedup) if accuracy >= floor else accuracy - floor


class BudgetMetrics(keras.callbacks.Callback):
    """Adds `val_flash_bytes`, `val_arena_bytes` and `val_budget_speedup` to every epoch's logs.

    Put it after `CascadeMetrics` (whose `val_cascade_accuracy` and
    `val_cascade_speedup` it reads) and before any callback that reads its figures;
    `BudgetedHyperModel.fit` does.

    Args:
        estimate: the model's `keras_egt.budget.estimate_deployment` dict.
        accuracy_floor: the floor of `budget_score`.

    Example:
    >>> model.fit(x, y, validation_data=(x_val, y_val), callbacks=[
    ...     CascadeMetrics(x_val, y_val), BudgetMetrics(estimate_deployment(model), 0.95)])
    """

    def __init__(self, estimate, accuracy_floor=DEFAULT_ACCURACY_FLOOR):
        super().__init__()
        self.flash_bytes = int(estimate["total_flash_bytes"])
        self.arena_bytes = int(estimate["max_arena_bytes"])
        self.accuracy_floor = _floor(accuracy_floor)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        missing = [k for k in ("val_cascade_accuracy", "val_cascade_speedup") if k not in logs]
        if missing:
            raise ValueError(
                f"BudgetMetrics reads {missing} from the epoch's logs: put a CascadeMetrics "
                "callback before it."
            )
        logs["val_flash_bytes"] = float(self.flash_bytes)
        logs["val_arena_bytes"] = float(self.arena_bytes)
        logs["val_budget_speedup"] = budget_score(
            logs["val_cascade_accuracy"], logs["val_cascade_speedup"], self.accuracy_floor)


def _floor(value):
    floor = float(value)
    if not 0 <= floor <= 1:
        raise ValueError(
            f"accuracy_floor must be a fraction in [0, 1] (0.95 for 95%). Received: {value!r}."
        )
    return floor


def _budget(value, name):
    if value is None:
        return None
    try:
        return budget.parse_bytes(value)
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from None


class _OverBudget(kt.errors.FailedTrialError):
    """A trial whose estimate is over the budget: FAILED on purpose, never trained."""


class BudgetedHyperModel(tuning.EGTHyperModel):
    """An `EGTHyperModel` over the `EarlyExitMCU` family that never trains an over-budget trial.

    Hyperparameters: those of `MCUSearchSpace` (`stage_1` ... `stage_K`,
    `attention_hidden_channels`), those of `EGTHyperModel` (`consistency_weight`,
    and as options `exit_weights`, `learning_rate`, ...) and, fixed so that a resumed
    search cannot mix trials judged by other rules, `flash_budget`, `arena_budget`
    and `accuracy_floor`.

    `fit` raises `keras_tuner.errors.FailedTrialError` (the trial is FAILED, the
    search goes on) before training when the model's estimated int8 flash (all
    segments) or TFLM arena (the largest segment's) is over its budget, naming the
    estimate and the budget, and otherwise trains as `EGTHyperModel.fit` with
    `BudgetMetrics` added. An error in `build` stops the search
    (`keras_tuner.errors.FatalError`). Give the tuner
    `max_consecutive_failed_trials=None`, so a run of rejections does not stop it
    (see the module docstring).

    Args:
        num_classes: number of classes.
        input_shape: `(height, width, channels)`.
        space: an `MCUSearchSpace` (default: `MCUSearchSpace()`, 4 stages).
        flash_budget: flash for all segments together, in bytes or as a size string
            (`"256KiB"`; see `keras_egt.budget.parse_bytes`); None: no limit.
        arena_budget: TFLM arena of the largest segment, likewise; None: no limit.
        accuracy_floor: the validation cascade accuracy a trial must reach to be
            ranked by its speedup, a fraction in [0, 1].
        lambdas: the λ values to search (default 0.3 only: this searches
            architectures).
        **kwargs: the other `EGTHyperModel` arguments (`threshold`, `criterion`,
            `exit_weights`, `learning_rates`, `decay_every`, `distribution`, ...).

    Example:
    >>> hypermodel = BudgetedHyperModel(9, (64, 64, 2), flash_budget="256KiB",
    ...                                 arena_budget="64KiB", accuracy_floor=0.95)
    >>> tuner = kt.RandomSearch(hypermodel, objective=objective("budget_speedup"),
    ...                         max_trials=20, max_consecutive_failed_trials=None,
    ...                         directory="runs", project_name="mcu")
    >>> tuner.search(x_train, y_train, validation_data=(x_val, y_val), epochs=30)
    >>> print(budget_results(tuner, (x_val, y_val)).to_markdown())
    """

    def __init__(self, num_classes, input_shape, space=None, flash_budget=None,
                 arena_budget=None, accuracy_floor=DEFAULT_ACCURACY_FLOOR,
                 lambdas=DEFAULT_ARCH_LAMBDAS, **kwargs):
        for name in ("widths", "backbone", "exit_layers"):
            if name in kwargs:
                raise ValueError(
                    f"BudgetedHyperModel searches the EarlyExitMCU family: {name} does not "
                    "apply. Give the candidate stages as space=MCUSearchSpace(...), or use "
                    "EGTHyperModel for another backbone."
                )
        self.space = MCUSearchSpace() if space is None else space
        if not isinstance(self.space, MCUSearchSpace):
            raise ValueError(
                f"space must be an MCUSearchSpace. Received: {type(self.space).__name__}."
            )
        self.space.check_input_shape(input_shape)
        self.flash_budget = _budget(flash_budget, "flash_budget")
        self.arena_budget = _budget(arena_budget, "arena_budget")
        self.accuracy_floor = _floor(accuracy_floor)
        super().__init__(num_classes, input_shape, lambdas=lambdas, backbone=self.mcu_backbone,
                         exit_layers=[f"stage_{k}" for k in range(1, self.space.num_stages + 1)],
                         **kwargs)

    def mcu_backbone(self, hp):
        """The trial's `mcu_backbone` (the `EGTHyperModel` backbone builder)."""
        return mcu_backbone(self.input_shape, self.space.declare(hp)["stages"])

    def _model(self, hp, consistency_weight, exit_weights, **options):
        # An EarlyExitMCU rather than EGTHyperModel's EarlyExitModel of the backbone:
        # its config holds the stages, so a searched model saves as what it is.
        architecture = self.space.declare(hp)
        return EarlyExitMCU(
            self.num_classes, self.input_shape, stages=architecture["stages"],
            attention_hidden_channels=architecture["attention_hidden_channels"],
            consistency_weight=consistency_weight, exit_weights=exit_weights, **options)

    def _declare(self, hp):
        values = super()._declare(hp)
        values.update(self.space.declare(hp))
        values["flash_budget"] = hp.Fixed("flash_budget", _bytes_text(self.flash_budget))
        values["arena_budget"] = hp.Fixed("arena_budget", _bytes_text(self.arena_budget))
        values["accuracy_floor"] = hp.Fixed("accuracy_floor", self.accuracy_floor)
        return values

    def check_budget(self, hp, model):
        """The estimate of `model` if within budget; else raises `FailedTrialError`.

        Args:
            hp: the trial's hyperparameters (named in the message).
            model: the model `build` returned.

        Returns:
            The `keras_egt.budget.estimate_deployment` dict.
        """
        try:
            # The exact combination, which the space's per-candidate check does not see.
            budget.check_architecture(self.space.declare(hp)["stages"], self.input_shape)
            return budget.check_budget(model, self.flash_budget, self.arena_budget)
        except (budget.ArchitectureTooLarge, budget.BudgetExceeded) as error:
            architecture = self.space.declare(hp)
            raise _OverBudget(
                f"Trial {_REJECTED} ({architecture['stages']}, attention_hidden_channels "
                f"{architecture['attention_hidden_channels']}): {error} Budget: "
                f"flash {_limit(self.flash_budget)}, arena {_limit(self.arena_budget)}."
            ) from None

    def fit(self, hp, model, *args, callbacks=None, **kwargs):
        """Rejects an over-budget trial, else trains it as `EGTHyperModel.fit` does.

        Args:
            hp: the trial's hyperparameters.
            model: the model `build` returned.
            *args, **kwargs: as `EGTHyperModel.fit` (`x`, `y`, `validation_data`,
                `epochs`, ...).
            callbacks: the search's callbacks.

        Returns:
            The `History` of `model.fit`.

        Raises:
            keras_tuner.errors.FailedTrialError: the estimate is over budget; nothing
                was trained.
        """
        estimate = self.check_budget(hp, model)
        metrics = BudgetMetrics(estimate, self.accuracy_floor)
        # EGTHyperModel.fit puts CascadeMetrics first, so this one comes right after it.
        return super().fit(hp, model, *args, callbacks=[metrics, *(callbacks or [])], **kwargs)


def _bytes_text(value):
    return "none" if value is None else f"{value} bytes"


def _kib(value):
    return "–" if value is None else f"{value / 1024:.1f}"


def _is_rejected(trial):
    return _REJECTED in (trial.message or "")


class BudgetResults(list):
    """The trained trials of a budgeted search, one dict per trial (see `budget_results`).

    Attributes:
        rejected: the trials rejected before training, one dict each.
        flash_budget, arena_budget: the budgets in bytes (None: no limit).
        accuracy_floor: the floor the trials were ranked with.
    """

    def __init__(self, rows=(), rejected=(), flash_budget=None, arena_budget=None,
                 accuracy_floor=DEFAULT_ACCURACY_FLOOR):
        super().__init__(rows)
        self.rejected = list(rejected)
        self.flash_budget = flash_budget
        self.arena_budget = arena_budget
        self.accuracy_floor = accuracy_floor

    def best(self):
        """The row of the fastest trial that meets the floor (the objective's best), or None."""
        feasible = [r for r in self if r["floor_met"]]
        if not feasible:
            return None
        return max(feasible, key=lambda r: (r["budget_speedup"], r["cascade_accuracy"]))

    def to_dict(self):
        """The budgets, the rows, the rejected trials and the best trial's id, JSON-ready."""
        best = self.best()
        return {"flash_budget": self.flash_budget, "arena_budget": self.arena_budget,
                "accuracy_floor": self.accuracy_floor, "trials": list(self),
                "rejected": self.rejected, "best_trial": best and best["trial_id"]}

    def to_markdown(self):
        """The Pareto table (best score first), then the rejected trials.

        Returns:
            A markdown string.
        """
        limits = (f"Budget: flash {_limit(self.flash_budget)}, arena {_limit(self.arena_budget)}; "
                  f"accuracy floor {100 * self.accuracy_floor:g}%.")
        lines = [limits, "",
                 "| Stages | Head | λ | Accuracy (%) | MAC speedup | Time speedup | "
                 "Flash (KiB) | Arena (KiB) | Floor met | Pareto | Trial |",
                 "|" + "---|" * 11]
        for r in sorted(self, key=lambda r: (-r["budget_speedup"], r["trial_id"])):
            time_speedup = "–" if r["time_speedup"] is None else f"{r['time_speedup']:.2f}x"
            lines.append(
                f"| {_cell(r['stages'])} | {r['attention_hidden_channels']} | "
                f"{r['consistency_weight']:g} | {100 * r['cascade_accuracy']:.2f} | "
                f"{r['cascade_speedup']:.2f}x | {time_speedup} | {_kib(r['flash_bytes'])} | "
                f"{_kib(r['arena_bytes'])} | {'yes' if r['floor_met'] else 'no'} | "
                f"{'yes' if r['pareto'] else ''} | {r['trial_id']} |"
            )
        if self.rejected:
            lines += ["", f"Rejected before training (over budget): {len(self.rejected)}.", "",
                      "| Stages | Head | Flash (KiB) | Arena (KiB) | Trial |", "|---|---|---|---|---|"]
            for r in sorted(self.rejected, key=lambda r: r["trial_id"]):
                lines.append(
                    f"| {_cell(r['stages'])} | {r['attention_hidden_channels']} | "
                    f"{_kib(r['flash_bytes'])} | {_kib(r['arena_bytes'])} | {r['trial_id']} |"
                )
        return "\n".join(lines) + "\n"


def _cell(stages):
    # The stages' "|" would split a markdown cell.
    return stages.replace("|", "\\|")


def _limit(value):
    if value is None:
        return "no limit"
    return f"{value // 1024} KiB" if value % 1024 == 0 else f"{value:,} bytes"


def _architecture(values, num_stages):
    return " | ".join(values[f"stage_{k}"] for k in range(1, num_stages + 1))


def budget_results(tuner, validation_data=None, timing_samples=100, timed="pareto"):
    """What a budgeted search found: its trained trials and the ones it rejected.

    Accuracy, MAC speedup and the estimates are those each trial logged at its best
    epoch (the one KerasTuner checkpointed). The wall-clock speedup is measured
    here, by reloading a trial's checkpoint and timing it with `keras_egt.evaluate`
    (batch 1, compiled cascade vs final exit alone) on `validation_data`: for the
    trials on the Pareto front of (cascade accuracy, MAC speedup) by default, as
    timing every trial costs a compile and `timing_samples` runs each.

    Args:
        tuner: a KerasTuner tuner that searched a `BudgetedHyperModel`.
        validation_data: `(x_val, y_val)` to time the trials on; None: no timing.
        timing_samples: samples timed per trial.
        timed: `"pareto"` (the front's trials) or `"all"` (every trained trial).

    Returns:
        A `BudgetResults`: dicts with `trial_id`, `stages` (block string),
        `attention_hidden_channels`, `consistency_weight` (λ), `cascade_accuracy`,
        `final_accuracy`, `cascade_speedup` (MACs), `time_speedup` (None where not
        timed), `flash_bytes`, `arena_bytes` (estimates), `floor_met`,
        `budget_speedup` (the objective), `pareto`, `best_step`; and `.rejected`:
        dicts with `trial_id`, `stages`, `attention_hidden_channels`,
        `flash_bytes`, `arena_bytes` and `message`.

    Raises:
        RuntimeError: a trial failed for another reason than its budget.

    Example:
    >>> results = budget_results(tuner, (x_val, y_val))
    >>> print(results.to_markdown())
    >>> best = tuner.load_model(tuner.oracle.trials[results.best()["trial_id"]])
    """
    hypermodel = tuner.hypermodel
    if not isinstance(hypermodel, BudgetedHyperModel):
        raise ValueError(
            "budget_results reads a search of a BudgetedHyperModel; for an EGTHyperModel "
            f"use keras_egt.tuning.results_table. Received: {type(hypermodel).__name__}."
        )
    if timed not in ("pareto", "all"):
        raise ValueError(f"timed must be 'pareto' or 'all'. Received: {timed!r}.")
    num_stages = hypermodel.space.num_stages
    trials = tuner.oracle.trials
    rows = []
    for row in tuning.results_table(tuner, skip_failed=_is_rejected):
        trial = trials[row["trial_id"]]
        values = trial.hyperparameters.values
        logged = {name: float(trial.metrics.get_last_value(f"val_{name}"))
                  for name in ("flash_bytes", "arena_bytes", "budget_speedup")}
        rows.append({
            "trial_id": row["trial_id"],
            "stages": _architecture(values, num_stages),
            "attention_hidden_channels": int(values["attention_hidden_channels"]),
            "consistency_weight": row["consistency_weight"],
            "cascade_accuracy": row["cascade_accuracy"],
            "final_accuracy": row["final_accuracy"],
            "cascade_speedup": row["cascade_speedup"],
            "time_speedup": None,
            "flash_bytes": int(logged["flash_bytes"]),
            "arena_bytes": int(logged["arena_bytes"]),
            "floor_met": bool(row["cascade_accuracy"] >= hypermodel.accuracy_floor),
            "budget_speedup": logged["budget_speedup"],
            "pareto": False,
            "best_step": row["best_step"],
        })
    front = {r["trial_id"] for r in tuning.pareto_front(rows, ("cascade_accuracy",
                                                                "cascade_speedup"))}
    for row in rows:
        row["pareto"] = row["trial_id"] in front
        if validation_data is not None and (row["pareto"] or timed == "all"):
            x_val, y_val = (np.asarray(v) for v in validation_data)
            model = tuner.load_model(trials[row["trial_id"]])
            report = evaluation.evaluate(model, x_val, y_val, threshold=hypermodel.threshold,
                                         criterion=hypermodel.criterion, timing=True,
                                         timing_samples=timing_samples)
            row["time_speedup"] = float(report.timing["speedup"])
    rejected = []
    for trial_id, trial in sorted(trials.items()):
        if str(trial.status) != "FAILED" or not _is_rejected(trial):
            continue
        values = trial.hyperparameters.values
        stages = _architecture(values, num_stages)
        head = int(values["attention_hidden_channels"])
        # The estimate depends on the architecture alone: rebuilt untrained, no training.
        estimate = budget.estimate_deployment(EarlyExitMCU(
            hypermodel.num_classes, hypermodel.input_shape, stages=stages,
            attention_hidden_channels=head))
        message = (trial.message or "").strip().splitlines()
        rejected.append({"trial_id": trial_id, "stages": stages,
                         "attention_hidden_channels": head,
                         "flash_bytes": estimate["total_flash_bytes"],
                         "arena_bytes": estimate["max_arena_bytes"],
                         "message": message[-1] if message else ""})
    return BudgetResults(rows, rejected, hypermodel.flash_budget, hypermodel.arena_budget,
                         hypermodel.accuracy_floor)
