"""KerasTuner search of the consistency weight λ, on one machine or many.

`EGTHyperModel` is a `keras_tuner.HyperModel` whose search space is λ (the paper's
0.1 ... 0.5 plus the baseline 0.0) and, as options, the per-exit loss weights and
the learning rate. Any KerasTuner tuner runs it (`GridSearch`, `RandomSearch`,
`BayesianOptimization`, `Hyperband`; this module's versions of those four refuse a
second search of one directory, see `LockedSearch`), including KerasTuner's own
distributed chief/worker mode, and every trial logs, besides Keras' metrics, its
validation cascade figures, so that trials can be ranked with `objective(...)`:

* `val_consistency`: the paper's Table I "Avg" (`EarlyExitCNN` tracks it);
* `val_cascade_accuracy`, `val_cascade_speedup`, `val_cascade_macs`: the
  confident-exit cascade at the hypermodel's threshold on the validation data;
* `val_score`: the harmonic mean of `val_cascade_accuracy` and `val_consistency`.
  Both lie in [0, 1]; the harmonic mean is high only when both are, so a trial
  cannot buy score with consistency while its accuracy collapses (or the reverse).

`results_table(tuner)` reads back what the trials logged (at each trial's best
epoch, the one KerasTuner checkpointed) as the paper's Table I, and
`pareto_front` keeps the trials no other trial beats on every figure.

Distributed search needs nothing of keras-egt: run the same script in every
process with KerasTuner's variables set, `KERASTUNER_TUNER_ID=chief` on one (it
serves the oracle and trains nothing) and `tuner0`, `tuner1`, ... on the others,
all with `KERASTUNER_ORACLE_IP` and `KERASTUNER_ORACLE_PORT` naming the chief.
"""

import contextlib
import math
import os

import keras
import keras_tuner as kt
import numpy as np

from keras_egt import cascade as egt_cascade
from keras_egt import metrics as egt_metrics
from keras_egt import recipe
from keras_egt.cnn import NUM_BLOCKS, EarlyExitCNN, resolve_widths
from keras_egt.losses import check_consistency_options
from keras_egt.model import EarlyExitModel

__all__ = [
    "DEFAULT_LAMBDAS",
    "OBJECTIVES",
    "BayesianOptimization",
    "CascadeMetrics",
    "EGTHyperModel",
    "GridSearch",
    "GridSearchOracle",
    "Hyperband",
    "LockedSearch",
    "RandomSearch",
    "ResultsTable",
    "harmonic_mean",
    "objective",
    "pareto_front",
    "results_table",
]

from keras_egt.tuning_options import DEFAULT_LAMBDAS, OBJECTIVES  # noqa: E402


def objective(name):
    """The `keras_tuner.Objective` that ranks trials by one of the logged figures.

    Args:
        name: `"score"` (harmonic mean of validation cascade accuracy and
            consistency), `"consistency"`, `"cascade_accuracy"`, `"final_accuracy"`
            (the final exit alone), `"cascade_speedup"` (MACs, at equal threshold)
            or `"budget_speedup"` (the MAC speedup subject to an accuracy floor;
            logged by `keras_egt.arch_search.BudgetedHyperModel` only).

    Returns:
        A `keras_tuner.Objective` to pass as a tuner's `objective`.

    Example:
    >>> tuner = kt.GridSearch(hypermodel, objective=objective("score"))
    """
    if name not in OBJECTIVES:
        raise ValueError(
            f"Unknown objective {name!r}; use one of {sorted(OBJECTIVES)}."
        )
    return kt.Objective(*OBJECTIVES[name])


def harmonic_mean(a, b):
    """`2ab / (a + b)`, 0 where either is 0 (the `val_score` of a trial)."""
    return 0.0 if a <= 0 or b <= 0 else 2.0 * a * b / (a + b)


class CascadeMetrics(keras.callbacks.Callback):
    """Adds the validation cascade's figures and `val_score` to every epoch's logs.

    Put it before any callback that reads them (`EGTHyperModel.fit` puts it first):
    Keras hands one `logs` dict to every callback in turn, the `History` last.

    Args:
        x_val: validation inputs.
        y_val: validation labels.
        threshold: the cascade's threshold(s).
        criterion: the exit criterion (`"max_probability"` or `"entropy"`).

    Example:
    >>> model.fit(x, y, validation_data=(x_val, y_val),
    ...           callbacks=[CascadeMetrics(x_val, y_val, threshold=0.9)])
    """

    def __init__(self, x_val, y_val, threshold=0.9, criterion="max_probability"):
        super().__init__()
        self.x_val = np.asarray(x_val)
        self.y_val = np.asarray(y_val).reshape(-1)
        # Checks the thresholds now, not at the end of the first epoch.
        self.cascade = egt_cascade.Cascade(None, threshold, criterion)

    def set_model(self, model):
        super().set_model(model)
        self.cascade.model = model

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        probabilities = egt_metrics.exit_probabilities(self.model, self.x_val)
        labels, exits = self.cascade.decide(probabilities)
        accuracy = float(np.mean(labels == self.y_val))
        logs["val_cascade_accuracy"] = accuracy
        logs["val_final_accuracy"] = float(np.mean(
            np.argmax(probabilities[-1], axis=-1) == self.y_val))
        logs["val_cascade_macs"] = self.cascade.average_macs(exits)
        logs["val_cascade_speedup"] = self.cascade.speedup(exits)
        if "val_consistency" in logs:
            logs["val_score"] = harmonic_mean(accuracy, float(logs["val_consistency"]))


def _cascade_text(hypermodel):
    """The validation cascade (criterion and thresholds) as text, for a Fixed hyperparameter."""
    values = np.round(np.asarray(hypermodel.threshold, np.float64), 9).tolist()
    return f"{hypermodel.criterion} {values}"


def _weights_text(weights):
    return ",".join(f"{float(w):g}" for w in weights)


class EGTHyperModel(kt.HyperModel):
    """A KerasTuner hypermodel of an early-exit model whose search space is λ (and more).

    Hyperparameters (as named in trials and `results_table`):

    * `consistency_weight`: λ, a `Choice` of `lambdas`;
    * `exit_weights`: the per-exit loss weights, a `Choice` of `exit_weights`
      written as "w1,w2,w3,w4,w5" (fixed to all ones unless given);
    * `learning_rate`: Adam's initial rate, a `Choice` of `learning_rates`
      (fixed to the paper's 1e-3 unless given);
    * `consistency_target`, `consistency_loss`: the EGT variant (see
      `keras_egt.losses.consistency_terms`), `Choice`s of `consistency_targets`
      and `consistency_losses`; declared only when given (else the paper's EGT);
    * `lambda_profile`: one λ per early exit as `λ_k = λ * profile_k`, a `Choice`
      of `lambda_profiles` written as "p1,p2,p3,p4"; declared only when given
      (else every early exit gets λ). λ = 0 stays the baseline whatever the profile.
    * `widths` (the CNN preset) or `backbone` and `exit_layers` (your own backbone),
      `input_shape`, `num_classes`, `cascade_threshold` (the validation cascade's
      criterion and thresholds): fixed; they identify the search, so that resuming
      in a directory that holds another search's trials fails clearly instead of
      mixing them. A `backbone` builder may declare hyperparameters of its own on
      the `hp` it is given (an architecture search).

    `fit` trains with the paper's schedule (the rate halved every `decay_every`
    epochs), needs validation data (`validation_data=` or `validation_split=`) and
    adds `CascadeMetrics`. An error inside a trial stops the search with
    `keras_tuner.errors.FatalError` rather than leaving a trial with no score.

    Args:
        num_classes: number of classes.
        input_shape: `(height, width, channels)`.
        widths: `"paper"`, `"micro"` or 5 ints (the `EarlyExitCNN` preset; ignored
            with `backbone`).
        lambdas: the λ values to search (each >= 0).
        exit_weights: None, or candidate K-tuples of per-exit loss weights.
        learning_rates: None, or candidate initial learning rates.
        consistency_targets: None, or candidates among `"final"`, `"next"`.
        consistency_losses: None, or candidates among `"cosine"`,
            `"attention_transfer"`.
        lambda_profiles: None, or candidate per-early-exit multipliers of λ
            (sequences of one number >= 0 per early exit).
        threshold: the validation cascade's threshold (the paper: 0.9).
        criterion: the validation cascade's exit criterion.
        decay_every: epochs between learning-rate halvings (the paper: 15).
        decay_factor: the factor applied each time.
        distribution: a `keras.distribution.Distribution` (JAX), e.g.
            `DataParallel()`, that every trial builds and trains under. Pass it
            here rather than with `keras.distribution.set_distribution`: KerasTuner
            calls `keras.backend.clear_session()` before each trial, which drops the
            global one. (TensorFlow: pass a `tf.distribute` strategy to the tuner
            as `distribution_strategy=` instead.)
        backbone: None (the `EarlyExitCNN` preset), or a function
            `backbone(hp) -> keras.Model` that builds a fresh backbone for each trial
            (it may call `hp.Choice(...)`), with input `input_shape`.
        exit_layers: with `backbone`, the exit layer names (see `EarlyExitModel`).
        name: the hypermodel's name.
        tunable: as `keras_tuner.HyperModel`.

    Example:
    >>> hypermodel = EGTHyperModel(num_classes=9, input_shape=(64, 64, 2), widths="paper")
    >>> tuner = kt.GridSearch(hypermodel, objective=objective("score"),
    ...                       directory="runs", project_name="lambda")
    >>> tuner.search(x_train, y_train, validation_data=(x_val, y_val), epochs=50)
    >>> print(results_table(tuner).to_markdown())
    """

    def __init__(self, num_classes, input_shape, widths="paper", lambdas=DEFAULT_LAMBDAS,
                 exit_weights=None, learning_rates=None, threshold=0.9,
                 criterion="max_probability", decay_every=recipe.DECAY_EVERY,
                 decay_factor=recipe.DECAY_FACTOR,
                 distribution=None, backbone=None, exit_layers=None, name=None,
                 tunable=True, consistency_targets=None, consistency_losses=None,
                 lambda_profiles=None):
        super().__init__(name=name, tunable=tunable)
        self.num_classes = int(num_classes)
        self.input_shape = tuple(int(d) for d in input_shape)
        if (backbone is None) != (exit_layers is None):
            raise ValueError("Pass backbone and exit_layers together (or neither, for the "
                             "EarlyExitCNN preset).")
        if backbone is not None and not callable(backbone):
            raise ValueError(
                "backbone must be a function hp -> keras.Model that builds a new backbone "
                f"for each trial, got {type(backbone).__name__}."
            )
        self.backbone = backbone
        self.exit_layers = None if exit_layers is None else [str(e) for e in exit_layers]
        self.widths = None if backbone is not None else resolve_widths(widths)
        self.num_exits = NUM_BLOCKS if backbone is None else len(self.exit_layers)
        self.lambdas = self._candidates("lambdas", lambdas, float)
        for lam in self.lambdas:
            if not math.isfinite(lam) or lam < 0:
                raise ValueError(f"lambdas must be finite numbers >= 0, got {lam}.")
        self.exit_weights = None if exit_weights is None else self._candidates(
            "exit_weights", exit_weights, _weights_text)
        self.learning_rates = None if learning_rates is None else self._candidates(
            "learning_rates", learning_rates, float)
        for rate in self.learning_rates or ():
            if not rate > 0:
                raise ValueError(f"learning_rates must be > 0, got {rate}.")
        for text in self.exit_weights or ():
            self._parse_weights(text)
        self.consistency_targets = None if consistency_targets is None else self._candidates(
            "consistency_targets", consistency_targets, str)
        self.consistency_losses = None if consistency_losses is None else self._candidates(
            "consistency_losses", consistency_losses, str)
        self.lambda_profiles = None if lambda_profiles is None else self._candidates(
            "lambda_profiles", lambda_profiles, _weights_text)
        for target in self.consistency_targets or ("final",):
            for loss in self.consistency_losses or ("cosine",):
                for profile in self.lambda_profiles or (None,):
                    # Checks every variant's options now, before any trial runs.
                    check_consistency_options(target, loss, self._weight(1.0, profile),
                                              self.num_exits - 1)
        # Checks the shapes by building one model now, before any trial runs.
        self._model(kt.HyperParameters(), self.lambdas[0], None)
        self.threshold = threshold
        self.criterion = egt_cascade.Cascade(None, threshold, criterion).criterion
        self.decay_every = int(decay_every)
        self.decay_factor = float(decay_factor)
        self.distribution = distribution

    def _scope(self):
        return self.distribution.scope() if self.distribution else contextlib.nullcontext()

    @staticmethod
    def _candidates(name, values, convert):
        values = [convert(v) for v in values]
        if not values:
            raise ValueError(
                f"The search space is empty: {name} holds no candidate. Give at least "
                f"one value (the paper's λ: {list(DEFAULT_LAMBDAS[1:])})."
            )
        if len(set(values)) != len(values):
            raise ValueError(f"{name} holds a value twice: {values}.")
        return values

    def _parse_weights(self, text):
        weights = tuple(float(w) for w in text.split(","))
        if len(weights) != self.num_exits or not all(math.isfinite(w) and w >= 0 for w in weights):
            raise ValueError(
                f"exit_weights candidates must be {self.num_exits} numbers (finite, >= 0), "
                f"got {text!r}."
            )
        return weights

    def _model(self, hp, consistency_weight, exit_weights, **options):
        if self.backbone is None:
            return EarlyExitCNN(self.num_classes, self.input_shape, widths=self.widths,
                                consistency_weight=consistency_weight, exit_weights=exit_weights,
                                **options)
        backbone = self.backbone(hp)
        shape = tuple(backbone.inputs[0].shape[1:]) if getattr(backbone, "inputs", None) else None
        if shape != self.input_shape:
            raise ValueError(
                f"The backbone builder made a model with input shape {shape}, not the "
                f"hypermodel's input_shape {self.input_shape}."
            )
        return EarlyExitModel(backbone, self.exit_layers, self.num_classes,
                              consistency_weight=consistency_weight, exit_weights=exit_weights,
                              **options)

    def _declare(self, hp):
        """Registers (or reads) this search's hyperparameters; returns their values."""
        if self.backbone is None:
            architecture = {"widths": hp.Fixed("widths", _weights_text(self.widths))}
        else:
            architecture = {
                "backbone": hp.Fixed("backbone", getattr(self.backbone, "__name__", "backbone")),
                "exit_layers": hp.Fixed("exit_layers", ",".join(self.exit_layers)),
            }
        values = {
            **architecture,
            "input_shape": hp.Fixed("input_shape", _weights_text(self.input_shape)),
            "num_classes": hp.Fixed("num_classes", self.num_classes),
            "consistency_weight": hp.Choice("consistency_weight", self.lambdas),
            "exit_weights": hp.Choice("exit_weights", self.exit_weights)
            if self.exit_weights else hp.Fixed("exit_weights", _weights_text((1,) * self.num_exits)),
            "learning_rate": hp.Choice("learning_rate", self.learning_rates)
            if self.learning_rates else hp.Fixed("learning_rate", recipe.LEARNING_RATE),
            # Trials are scored at this cascade: a re-run at another threshold in the
            # same project must not reuse them (check_space refuses it).
            "cascade_threshold": hp.Fixed("cascade_threshold", _cascade_text(self)),
        }
        if self.consistency_targets:
            values["consistency_target"] = hp.Choice("consistency_target", self.consistency_targets)
        if self.consistency_losses:
            values["consistency_loss"] = hp.Choice("consistency_loss", self.consistency_losses)
        if self.lambda_profiles:
            values["lambda_profile"] = hp.Choice("lambda_profile", self.lambda_profiles)
        return values

    @staticmethod
    def _weight(lam, profile):
        """λ, or one λ per early exit `λ * profile_k` when a profile is given."""
        if profile is None:
            return float(lam)
        return [float(lam) * float(p) for p in profile.split(",")]

    def check_space(self, hp):
        """Raises `FatalValueError` unless `hp` is this hypermodel's search space.

        A tuner reloaded from a directory keeps the space it finds there, so a
        directory holding another search's trials would silently mix them.

        Args:
            hp: a `keras_tuner.HyperParameters` (a trial's, or `oracle.get_space()`).
        """
        expected = kt.HyperParameters()
        self._declare(expected)
        ours = {h.name: h.get_config() for h in expected.space}
        found = {h.name: h.get_config() for h in hp.space}
        if self.backbone is not None:
            # The builder's own hyperparameters are part of the search, not a mismatch.
            found = {n: c for n, c in found.items() if n in ours}
        if any(found.get(name, config) != config for name, config in ours.items()) or (
            set(found) - set(ours)
        ):
            differ = sorted(
                n for n in set(ours) | set(found) if n in found and ours.get(n) != found[n]
            )
            raise kt.errors.FatalValueError(
                "The tuner's directory holds the trials of another search (its "
                f"hyperparameters {differ} differ from this EGTHyperModel's"
                + ("; its trials were scored at another cascade threshold"
                   if "cascade_threshold" in differ else "")
                + "). Give this "
                "search its own project_name or directory, or pass overwrite=True to "
                "discard the old trials."
            )

    def declare_hyperparameters(self, hp):
        self._declare(hp)

    def build(self, hp):
        self.check_space(hp)
        values = self._declare(hp)
        with _fatal_on_error(f"Building the trial with {hp.values}"), self._scope():
            model = self._model(
                hp,
                self._weight(values["consistency_weight"], values.get("lambda_profile")),
                self._parse_weights(values["exit_weights"]),
                consistency_target=values.get("consistency_target", "final"),
                consistency_loss=values.get("consistency_loss", "cosine"),
            )
            recipe.compile_model(model, values["learning_rate"])
            # KerasTuner's checkpoints hold Adam's slots: a built optimizer restores
            # them (Hyperband resumes trials from them) instead of skipping them.
            model.optimizer.build(model.trainable_variables)
        return model

    def fit(self, hp, model, x=None, y=None, validation_data=None, validation_split=None,
            callbacks=None, **kwargs):
        """Trains one trial; see the class docstring.

        Args:
            hp: the trial's hyperparameters.
            model: the model `build` returned.
            x: training inputs (arrays, a `tf.data.Dataset` or a `PyDataset`).
            y: training labels (arrays only).
            validation_data: `(x_val, y_val)` arrays, or a dataset of such batches.
            validation_split: instead of `validation_data`, the fraction of array
                inputs `x`, `y` held out (their last samples, as Keras does).
            callbacks: the search's callbacks (KerasTuner adds its own).
            **kwargs: passed to `model.fit` (`epochs`, `batch_size`, ...).

        Returns:
            The `History` of `model.fit`.
        """
        if validation_data is None and validation_split:
            x, y, validation_data = _split(x, y, validation_split)
        if validation_data is None:
            raise kt.errors.FatalValueError(
                "EGTHyperModel ranks trials on validation data: pass "
                "validation_data=(x_val, y_val) or validation_split=0.15 to search()."
            )
        x_val, y_val = _arrays(validation_data)
        callbacks = [
            CascadeMetrics(x_val, y_val, self.threshold, self.criterion),
            *(callbacks or []),
            *recipe.schedule(self.decay_every, self.decay_factor),
        ]
        with _fatal_on_error(f"The trial with {hp.values}"), self._scope():
            return model.fit(x, y, validation_data=validation_data, callbacks=callbacks,
                             **kwargs)


@contextlib.contextmanager
def _fatal_on_error(what):
    """An error in the block is the code's or the space's, not the trial's: KerasTuner
    would log the trial as failed with no score and go on (with
    max_consecutive_failed_trials=None, for every trial), so it stops the search.
    A trial rejected on purpose (`FailedTrialError`) stays a failed trial."""
    try:
        yield
    except (kt.errors.FatalError, kt.errors.FailedTrialError):
        raise
    except Exception as error:
        raise kt.errors.FatalError(f"{what} failed: {type(error).__name__}: {error}") from error


def _split(x, y, fraction):
    if not 0 < float(fraction) < 1:
        raise kt.errors.FatalValueError(f"validation_split must lie in (0, 1), got {fraction}.")
    if y is None or not hasattr(x, "__len__"):
        raise kt.errors.FatalValueError(
            "validation_split needs array inputs x and y; with a dataset pass "
            "validation_data instead."
        )
    x, y = np.asarray(x), np.asarray(y)
    cut = len(x) - int(math.ceil(len(x) * float(fraction)))
    if cut < 1 or cut >= len(x):
        raise kt.errors.FatalValueError(
            f"validation_split={fraction} of {len(x)} samples leaves no training or "
            "no validation sample."
        )
    return x[:cut], y[:cut], (x[cut:], y[cut:])


def _arrays(data):
    """`(x, y)` numpy arrays of validation data given as a tuple or a dataset."""
    if isinstance(data, (tuple, list)):
        if len(data) < 2:
            raise kt.errors.FatalValueError("validation_data must be (x_val, y_val).")
        return np.asarray(data[0]), np.asarray(data[1])
    batches = (data[i] for i in range(len(data))) if isinstance(
        data, keras.utils.PyDataset) else iter(data)
    xs, ys = [], []
    for batch in batches:
        xs.append(np.asarray(batch[0]))
        ys.append(np.asarray(batch[1]))
    if not xs:
        raise kt.errors.FatalValueError("validation_data holds no batch.")
    return np.concatenate(xs), np.concatenate(ys)


# --- a grid search that resumes ------------------------------------------------


class GridSearchOracle(kt.oracles.GridSearchOracle):
    """KerasTuner's grid oracle, with its place in the grid kept across reloads.

    KerasTuner 1.4.8's `GridSearchOracle` keeps the grid order of its trials and the
    queue of trials to continue from in memory only, so a search resumed with
    `overwrite=False` in a new process fails with a `KeyError` after its first trial
    (keras-team/keras-tuner#1055). This saves both with the oracle's state.
    Everything else is KerasTuner's own.
    """

    def get_state(self):
        state = super().get_state()
        order, index = [], 0 if self._ordered_ids._memory else None
        while index is not None:  # the linked list's head is its first entry
            order.append(self._ordered_ids._memory[index])
            index = self._ordered_ids._next_index[index]
        state["grid_order"] = order
        state["populate_next"] = list(self._populate_next)
        return state

    def set_state(self, state):
        super().set_state(state)
        self._ordered_ids = type(self._ordered_ids)()
        for trial_id in state.get("grid_order", []):
            self._ordered_ids.insert(trial_id)
        self._populate_next = list(state.get("populate_next", []))


def _project_dir(tuner_kwargs):
    """The `directory/project_name` a KerasTuner tuner made with `tuner_kwargs` writes."""
    return os.path.join(str(tuner_kwargs.get("directory") or "."),
                        tuner_kwargs.get("project_name") or "untitled_project")


@contextlib.contextmanager
def _search_lock(project_dir):
    """The one-writer lock of a tuner directory (`keras_egt.locks.writer_lock`).

    In KerasTuner's distributed mode (its `KERASTUNER_ORACLE_IP` set) the chief's
    oracle hands out every trial once, and the chief and its workers share the
    directory: there it takes no lock.
    """
    from keras_egt.locks import writer_lock

    if "KERASTUNER_ORACLE_IP" in os.environ:
        yield None
        return
    with writer_lock(project_dir, "tuner directory") as path:
        yield path


class LockedSearch:
    """Mixin of a KerasTuner tuner: one search at a time per `directory/project_name`.

    Two searches on one directory would both run every trial, and a second tuner made
    with `overwrite=True` would delete the running one's trials. So `search` and an
    `overwrite=True` construction hold the directory's lock (`keras_egt.locks`); the
    second is refused at once, before any trial runs or any file is removed, with one
    line naming the directory and the process that holds it. Put it first among the
    bases: `class RandomSearch(LockedSearch, kt.RandomSearch)`.

    Example:
    >>> tuner = RandomSearch(hypermodel, objective=objective("score"), max_trials=10,
    ...                      directory="runs", project_name="lambda")
    >>> tuner.search(x_train, y_train, validation_split=0.15, epochs=50)
    """

    def __init__(self, *args, **kwargs):
        if not kwargs.get("overwrite"):
            super().__init__(*args, **kwargs)
            return
        with _search_lock(_project_dir(kwargs)):
            super().__init__(*args, **kwargs)

    def search(self, *fit_args, **fit_kwargs):
        """`keras_tuner.Tuner.search`, refused while another process searches this directory.

        Raises:
            keras_egt.locks.LockedError: another live process searches it (one line).
        """
        with _search_lock(self.project_dir):
            return super().search(*fit_args, **fit_kwargs)


class GridSearch(LockedSearch, kt.Tuner):
    """`keras_tuner.GridSearch` that resumes a stopped search (see `GridSearchOracle`).

    Takes exactly `keras_tuner.GridSearch`'s arguments; one search at a time per
    directory (`LockedSearch`).

    Example:
    >>> tuner = GridSearch(hypermodel, objective=objective("score"), directory="runs",
    ...                    project_name="lambda", overwrite=False)   # resumes
    """

    def __init__(self, hypermodel=None, objective=None, max_trials=None, seed=None,
                 hyperparameters=None, tune_new_entries=True, allow_new_entries=True,
                 max_retries_per_trial=0, max_consecutive_failed_trials=3, **kwargs):
        self.seed = seed
        oracle = GridSearchOracle(
            objective=objective, max_trials=max_trials, seed=seed,
            hyperparameters=hyperparameters, tune_new_entries=tune_new_entries,
            allow_new_entries=allow_new_entries, max_retries_per_trial=max_retries_per_trial,
            max_consecutive_failed_trials=max_consecutive_failed_trials,
        )
        super().__init__(oracle, hypermodel, **kwargs)


class RandomSearch(LockedSearch, kt.RandomSearch):
    """`keras_tuner.RandomSearch`, one search at a time per directory (`LockedSearch`)."""


class BayesianOptimization(LockedSearch, kt.BayesianOptimization):
    """`keras_tuner.BayesianOptimization`, one search at a time per directory (`LockedSearch`)."""


class Hyperband(LockedSearch, kt.Hyperband):
    """`keras_tuner.Hyperband`, one search at a time per directory (`LockedSearch`)."""


# --- results ---------------------------------------------------------------------

# Row key -> metric logged by the trials.
_LOGGED = {
    "consistency": "val_consistency",
    "cascade_accuracy": "val_cascade_accuracy",
    "final_accuracy": "val_final_accuracy",
    "cascade_speedup": "val_cascade_speedup",
    "cascade_macs": "val_cascade_macs",
    "score": "val_score",
}


class ResultsTable(list):
    """The completed trials of a search, one dict per trial (see `results_table`)."""

    def to_markdown(self):
        """The rows as the paper's Table I (plus cascade figures), sorted by λ.

        Returns:
            A markdown string.
        """
        front = {r["trial_id"] for r in pareto_front(self)}
        front_macs = {
            r["trial_id"] for r in pareto_front(self, ("cascade_accuracy", "consistency",
                                                       "cascade_speedup"))
        }
        early = max((len(_early_keys(r)) for r in self), default=0)
        head = ("| λ | " + "".join(f"Exit {k} | " for k in range(1, early + 1))
                + f"Avg | Cascade Acc. (%) | Exit {early + 1} Acc. (%) | MAC speedup | Score "
                "| Epoch | Trial | Pareto |")
        lines = [head, "|" + "---|" * (early + 9)]
        for r in sorted(self, key=lambda r: (r["consistency_weight"], r["trial_id"])):
            pareto = ("acc/cons" if r["trial_id"] in front else
                      "+MACs" if r["trial_id"] in front_macs else "")
            lines.append(
                f"| {r['consistency_weight']:g} | "
                + " | ".join(_fmt(r.get(f"exit_{k}_consistency")) for k in range(1, early + 1))
                + f" | {_fmt(r['consistency'])} | {_fmt(r['cascade_accuracy'], 100, 2)} | "
                f"{_fmt(r['final_accuracy'], 100, 2)} | {_fmt(r['cascade_speedup'], 1, 2)}x | "
                f"{_fmt(r['score'])} | {r['best_step'] + 1} | {r['trial_id']} | {pareto} |"
            )
        return "\n".join(lines) + "\n"


def _early_keys(row):
    return [k for k in row if k.startswith("exit_") and k.endswith("_consistency")]


def _fmt(value, scale=1, digits=3):
    return "–" if value is None else f"{scale * value:.{digits}f}"


def results_table(tuner, skip_failed=None):
    """What every completed trial of a search logged, as the paper's Table I.

    The figures are those of each trial's best epoch by the tuner's objective (the
    epoch KerasTuner checkpointed), read from the oracle as the trials logged them.

    Args:
        tuner: a KerasTuner tuner that searched an `EGTHyperModel`.
        skip_failed: None, or a function `trial -> bool`: the failed trials it
            returns True for are left out instead of raising (the over-budget
            trials of `keras_egt.arch_search`, rejected on purpose).

    Returns:
        A `ResultsTable`: dicts with `trial_id`, `consistency_weight` (λ),
        `exit_weights`, `learning_rate`, `exit_1_consistency` ...
        `exit_{K-1}_consistency`, `consistency` (their average), `cascade_accuracy`,
        `final_accuracy`, `cascade_speedup`, `cascade_macs`, `score`, `objective`
        and `best_step` (0-based epoch).

    Raises:
        RuntimeError: a trial failed (and `skip_failed` does not skip it) or was
            invalid (its message is quoted).
        keras_tuner.errors.FatalValueError: the tuner's directory holds another
            search's trials (see `EGTHyperModel.check_space`).

    Example:
    >>> print(results_table(tuner).to_markdown())
    """
    if isinstance(tuner.hypermodel, EGTHyperModel):
        tuner.hypermodel.check_space(tuner.oracle.get_space())
    rows = ResultsTable()
    for trial_id, trial in sorted(tuner.oracle.trials.items()):
        status = str(trial.status)
        if status == "FAILED" and skip_failed is not None and skip_failed(trial):
            continue
        if status in ("FAILED", "INVALID"):
            message = (trial.message or "").strip().splitlines()
            raise RuntimeError(
                f"Trial {trial_id} ({trial.hyperparameters.values}) {status.lower()}: "
                f"{message[-1] if message else 'no message'}"
            )
        if status != "COMPLETED":
            continue
        values = trial.hyperparameters.values
        row = {
            "trial_id": trial_id,
            "consistency_weight": float(values["consistency_weight"]),
            "exit_weights": values.get("exit_weights"),
            "learning_rate": values.get("learning_rate"),
        }
        early = sorted(
            int(name[len("val_exit_"):-len("_consistency")])
            for name in trial.metrics.metrics
            if name.startswith("val_exit_") and name.endswith("_consistency")
        )
        logged = {f"exit_{k}_consistency": f"val_exit_{k}_consistency" for k in early}
        for key, metric in {**logged, **_LOGGED}.items():
            row[key] = (float(trial.metrics.get_last_value(metric))
                        if trial.metrics.exists(metric) else None)
        row["objective"] = None if trial.score is None else float(trial.score)
        # KerasTuner counts a trial's steps from its own first epoch; a Hyperband trial
        # that resumes another one starts at tuner/initial_epoch.
        row["best_step"] = int(values.get("tuner/initial_epoch", 0)) + int(trial.best_step or 0)
        rows.append(row)
    return rows


def _dominates(a, b, keys):
    return all(a[k] >= b[k] for k in keys) and any(a[k] > b[k] for k in keys)


def pareto_front(rows, keys=("cascade_accuracy", "consistency")):
    """The rows no other row beats on every one of `keys` (all maximised).

    Args:
        rows: a `ResultsTable` or any list of dicts holding `keys`.
        keys: the figures compared; add `"cascade_speedup"` for the MAC trade-off.

    Returns:
        A `ResultsTable` of the non-dominated rows, in their original order.

    Example:
    >>> pareto_front(results_table(tuner), ("cascade_accuracy", "consistency", "cascade_speedup"))
    """
    usable = [r for r in rows if all(r.get(k) is not None for k in keys)]
    return ResultsTable(
        r for r in usable if not any(_dominates(o, r, keys) for o in usable if o is not r)
    )
