"""`keras-egt tune`: KerasTuner search of λ, or of the EarlyExitMCU that fits a flash and RAM budget.

    keras-egt tune --data radar --lambdas 0,0.1,0.2,0.3,0.4,0.5 --epochs 50 --output-dir tune
    keras-egt tune --data radar --flash-budget 256KiB --arena-budget 64KiB --accuracy-floor 0.95 \\
        --max-trials 30 --epochs 30 --output-dir tune_mcu
    KERASTUNER_TUNER_ID=chief KERASTUNER_ORACLE_IP=10.0.0.1 KERASTUNER_ORACLE_PORT=8000 keras-egt tune ...
    KERASTUNER_TUNER_ID=tuner0 KERASTUNER_ORACLE_IP=10.0.0.1 KERASTUNER_ORACLE_PORT=8000 keras-egt tune ...

Trials are ranked on a validation split held out of the training data (the test
split stays unseen). The search lives in --directory/--project-name, so a stopped
search resumes where it stopped; the results land in --output-dir: `results.md`
(Table I per trial), `results.json`, `pareto.png` and `best.keras`.

With --flash-budget or --arena-budget the search is over the EarlyExitMCU family
instead (`keras_egt.arch_search`): a trial whose estimated int8 flash or TFLM arena
is over budget is rejected before training, the others are ranked by their MAC
speedup among those whose validation cascade reaches --accuracy-floor, and the
output is the Pareto table (`results.md`, `results.json`) and the best trial that
meets the floor (`best.keras`).
"""

import contextlib
import json
import os

from keras_egt import defaults
from keras_egt.cli import CLIError
from keras_egt.cli import train as common

TUNERS = ("grid", "random", "bayesian", "hyperband")


def _floats(text, option):
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = None
    if not values:
        raise CLIError(f"{option} must be comma-separated numbers, got {text!r}.")
    return values


def register(subparsers):
    """Adds the `tune` command to `subparsers`."""
    from keras_egt.tuning_options import (
        DEFAULT_ACCURACY_FLOOR,
        DEFAULT_ARCH_LAMBDAS,
        DEFAULT_LAMBDAS,
        OBJECTIVES,
    )

    parser = subparsers.add_parser(
        "tune", help="KerasTuner search of λ (Table I per trial, Pareto front, best model), "
        "or with --flash-budget/--arena-budget of the EarlyExitMCU that fits your part",
        description="Searches the consistency weight λ with KerasTuner, ranking trials on a "
        "validation split of the training data. With --flash-budget or --arena-budget it "
        "searches EarlyExitMCU architectures instead, rejecting every trial whose estimated "
        "int8 flash or arena is over budget before training it. Set KERASTUNER_TUNER_ID, "
        "KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT to run it as the chief or a "
        "worker of KerasTuner's distributed search; run the same command in every process.")
    common.add_data_arguments(parser)
    parser.add_argument("--widths", default=None,
                        help="λ search: 'paper', 'micro' or 5 comma-separated ints (default "
                        "paper)")
    parser.add_argument("--lambdas", default=None,
                        help="comma-separated λ values to search (default the paper's "
                        "0.1-0.5 and the baseline 0: "
                        + ",".join(f"{v:g}" for v in DEFAULT_LAMBDAS) + "; budgeted search: "
                        + ",".join(f"{v:g}" for v in DEFAULT_ARCH_LAMBDAS) + ")")
    parser.add_argument("--learning-rates", default=None,
                        help="comma-separated learning rates to search as well (default: "
                        "the paper's 1e-3 only)")
    parser.add_argument("--tuner", choices=TUNERS, default=None,
                        help="KerasTuner algorithm (default grid: every λ once; budgeted "
                        "search: random)")
    parser.add_argument("--objective", choices=sorted(OBJECTIVES), default=None,
                        help="how trials are ranked: score (harmonic mean of validation "
                        "cascade accuracy and consistency), consistency, cascade_accuracy, "
                        "final_accuracy or cascade_speedup (default score); budget_speedup "
                        "(MAC speedup of the trials that reach --accuracy-floor, the "
                        "budgeted search's default)")
    parser.add_argument("--max-trials", type=int, default=None,
                        help="trials at most, rejected ones included (default: one per grid "
                        "point; 10 for random and bayesian)")
    parser.add_argument("--epochs", type=int, default=defaults.EPOCHS,
                        help=f"epochs per trial (hyperband: the most any trial gets; default "
                        f"{defaults.EPOCHS})")
    parser.add_argument("--batch-size", type=int, default=defaults.BATCH_SIZE,
                        help=f"batch size (default {defaults.BATCH_SIZE})")
    parser.add_argument("--validation-split", type=float, default=0.15,
                        help="fraction of the (shuffled) training data held out to rank "
                        "trials (default 0.15)")
    parser.add_argument("--threshold", type=float, default=defaults.THRESHOLD,
                        help=f"threshold of the validation cascade (default {defaults.THRESHOLD:g})")
    parser.add_argument("--directory", default="runs",
                        help="KerasTuner's directory (default runs)")
    parser.add_argument("--project-name", default=None,
                        help="KerasTuner's project name (default lambda; budgeted search: "
                        "mcu)")
    parser.add_argument("--overwrite", action="store_true",
                        help="discard earlier trials in --directory/--project-name instead "
                        "of resuming")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the split, the initialisation and the tuner (default 0)")
    parser.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2),
                        help="Keras verbosity (default 1, progress bars)")
    parser.add_argument("--output-dir", default="tune",
                        help="where results.md, results.json, pareto.png and best.keras go "
                        "(default tune)")
    search = parser.add_argument_group(
        "budgeted architecture search (EarlyExitMCU; on when a budget is given)")
    search.add_argument("--flash-budget", default=None, metavar="SIZE",
                        help="int8 flash of all segments together, e.g. 256KiB, 1MiB or "
                        "200000 (bytes)")
    search.add_argument("--arena-budget", default=None, metavar="SIZE",
                        help="TFLM arena of the largest segment, e.g. 64KiB")
    search.add_argument("--accuracy-floor", type=float, default=None,
                        help="validation cascade accuracy a trial must reach, as a fraction "
                        f"(default {DEFAULT_ACCURACY_FLOOR:g})")
    search.add_argument("--stages", default=None, metavar="CANDIDATES",
                        help="candidate blocks per stage: stages separated by '|', a stage's "
                        "candidates by ',', e.g. 'c8p s16p s32p, c8p s12p s24p | c64, c48 c48 | "
                        "c96p | c128' (default: 4 stages around the mcu preset)")
    search.add_argument("--head-channels", default=None, metavar="INTS",
                        help="candidate attention widths of the exit heads, comma-separated "
                        "(default 8,16)")
    search.add_argument("--timing-samples", type=int, default=100,
                        help="samples timed (batch 1) per Pareto-front trial for the time "
                        "speedup (default 100)")
    parser.set_defaults(func=tune_command)


def _make_tuner(args, hypermodel, objective, max_consecutive_failed_trials=1):
    """The tuner of --tuner; a damaged checkpoint to resume from is a one-line CLIError."""
    project = os.path.join(args.directory, args.project_name)
    try:
        return _new_tuner(args, hypermodel, objective, max_consecutive_failed_trials)
    # Resuming reads the trials' trial.json, oracle.json and tuner0.json: truncated or
    # edited ones raise JSONDecodeError (a ValueError), KeyError or TypeError naming no
    # file; a key missing from oracle.json comes as KerasTuner's RuntimeError.
    except (ValueError, KeyError, TypeError, RuntimeError) as error:
        if isinstance(error, RuntimeError) and not isinstance(error.__cause__, KeyError):
            raise
        damaged = _unreadable_json(project)
        what = (f"{', '.join(damaged)} {'is' if len(damaged) == 1 else 'are'} damaged"
                if damaged else "a tuner checkpoint there is damaged")
        raise CLIError(
            f"cannot resume the search in {project}: {what} "
            f"({type(error).__name__}: {' '.join(str(error).split())[:120]}). Remove "
            f"{project}, pass --overwrite, or pick another --directory."
        ) from None


def _unreadable_json(project, most=3):
    """The checkpoint files of `project` that are not valid JSON, in KerasTuner's reading
    order (each trial's trial.json, oracle.json, then the tuners' files); at most `most`."""
    import glob

    paths = (sorted(glob.glob(os.path.join(glob.escape(project), "trial_*", "trial.json")))
             + [os.path.join(project, "oracle.json")]
             + sorted(glob.glob(os.path.join(glob.escape(project), "tuner*.json"))))
    damaged = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                json.load(f)
        except FileNotFoundError:
            continue
        except (OSError, ValueError):  # ValueError: bad JSON or bad UTF-8
            damaged.append(path)
            if len(damaged) == most:
                break
    return damaged


def _new_tuner(args, hypermodel, objective, max_consecutive_failed_trials):
    # keras_egt.tuning's tuners, never KerasTuner's own: they hold the directory's lock
    # (tuning.LockedSearch), so a second `tune` on it is refused before any trial.
    from keras_egt import tuning

    common_args = dict(objective=objective, directory=args.directory,
                       project_name=args.project_name, overwrite=args.overwrite,
                       seed=args.seed,
                       max_consecutive_failed_trials=max_consecutive_failed_trials)
    if args.tuner == "hyperband":
        return tuning.Hyperband(hypermodel, max_epochs=args.epochs, **common_args)
    cls = {"grid": tuning.GridSearch, "random": tuning.RandomSearch,
           "bayesian": tuning.BayesianOptimization}[args.tuner]
    max_trials = args.max_trials or (None if args.tuner == "grid" else 10)
    return cls(hypermodel, max_trials=max_trials, **common_args)


def _budgeted(args):
    return args.flash_budget is not None or args.arena_budget is not None


def _check_args(args):
    """Checks and completes the options whose defaults depend on the kind of search."""
    for name in ("epochs", "batch_size", "timing_samples"):
        if getattr(args, name) < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}.")
    if args.max_trials is not None and args.max_trials < 1:
        raise CLIError(f"--max-trials must be >= 1, got {args.max_trials}.")
    if not 0 < args.validation_split < 1:
        raise CLIError(f"--validation-split must lie in (0, 1), got {args.validation_split}.")
    for option in ("directory", "output_dir"):
        path = getattr(args, option)
        if os.path.lexists(path) and not os.path.isdir(path):
            raise CLIError(f"--{option.replace('_', '-')} {path} is a file, not a folder; "
                           "name a folder (it is created if missing).")
    common.check_radar_counts(args)
    from keras_egt.tuning_options import (
        DEFAULT_ACCURACY_FLOOR,
        DEFAULT_ARCH_LAMBDAS,
        DEFAULT_LAMBDAS,
    )

    if _budgeted(args):
        if args.widths is not None:
            raise CLIError("--widths sets the λ search's CNN; the budgeted search (--flash-budget, "
                           "--arena-budget) picks EarlyExitMCU stages itself: drop --widths.")
        if args.objective not in (None, "budget_speedup"):
            raise CLIError(f"the budgeted search ranks trials by budget_speedup, got "
                           f"--objective {args.objective}.")
        args.space = _space(args.stages, args.head_channels)
        args.flash_budget = common.parse_size(args.flash_budget, "--flash-budget")
        args.arena_budget = common.parse_size(args.arena_budget, "--arena-budget")
        if args.accuracy_floor is None:
            args.accuracy_floor = DEFAULT_ACCURACY_FLOOR
        if not 0 <= args.accuracy_floor <= 1:
            raise CLIError(f"--accuracy-floor must be a fraction in [0, 1] (0.95 for 95%), got "
                           f"{args.accuracy_floor:g}.")
        defaults = dict(lambdas=DEFAULT_ARCH_LAMBDAS, tuner="random",
                        objective="budget_speedup", project_name="mcu")
    else:
        if (args.objective == "budget_speedup" or args.accuracy_floor is not None
                or args.stages is not None or args.head_channels is not None):
            raise CLIError("budget_speedup, --accuracy-floor, --stages and --head-channels "
                           "belong to the budgeted search: give --flash-budget and/or "
                           "--arena-budget.")
        defaults = dict(lambdas=DEFAULT_LAMBDAS, tuner="grid", objective="score",
                        project_name="lambda", widths="paper")
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, ",".join(f"{v:g}" for v in value) if name == "lambdas" else value)


def _space(stages, head_channels):
    """The `MCUSearchSpace` of --stages and --head-channels (CLIError if bad)."""
    from keras_egt import arch_search

    options = {}
    if stages is not None:
        options["stages"] = [[c.strip() for c in stage.split(",") if c.strip()]
                             for stage in stages.split("|")]
    if head_channels is not None:
        try:
            options["attention_hidden_channels"] = [int(v) for v in head_channels.split(",")
                                                    if v.strip()]
        except ValueError:
            raise CLIError(f"--head-channels must be comma-separated whole numbers, got "
                           f"{head_channels!r}.") from None
    try:
        return arch_search.MCUSearchSpace(**options)
    except ValueError as error:
        option = "--head-channels" if "attention_hidden_channels" in str(error) else "--stages"
        raise CLIError(f"{option}: {error}") from None


def tune_command(args):
    """Handler of `keras-egt tune`; returns the exit code."""
    _check_args(args)
    widths = None if _budgeted(args) else common.parse_widths(args.widths)
    lambdas = _floats(args.lambdas, "--lambdas")
    rates = _floats(args.learning_rates, "--learning-rates") if args.learning_rates else None
    (x, y), _ = common.load_dataset(args)

    import keras
    import numpy as np

    from keras_egt import plots, tuning

    keras.utils.set_random_seed(args.seed)
    order = np.random.default_rng(args.seed).permutation(len(x))
    x, y = x[order], y[order]
    num_classes = common.num_classes(args, y)
    if _budgeted(args):
        return _budgeted_search(args, x, y, num_classes, lambdas, rates)
    hypermodel = tuning.EGTHyperModel(num_classes, x.shape[1:], widths=widths,
                                      lambdas=lambdas, learning_rates=rates,
                                      threshold=args.threshold)
    tuner = _make_tuner(args, hypermodel, tuning.objective(args.objective))
    tuner.search(x, y, validation_split=args.validation_split, epochs=args.epochs,
                 batch_size=args.batch_size, verbose=args.verbose)
    if _is_worker():
        return 0

    table = tuning.results_table(tuner)
    if not table:
        raise CLIError("the search finished without a completed trial.")
    os.makedirs(args.output_dir, exist_ok=True)
    markdown = table.to_markdown()
    _write(args, markdown, {"objective": args.objective, "trials": list(table)})
    plots.pareto_plot(table, os.path.join(args.output_dir, "pareto.png"))
    best = tuner.get_best_models(1)[0]
    common.save_model(best, os.path.join(args.output_dir, "best.keras"))
    print(markdown)
    print(f"Best: λ = {best.consistency_weight:g}. Wrote results.md, results.json, pareto.png "
          f"and best.keras to {args.output_dir}/.")
    return 0


def _is_worker():
    worker = os.environ.get("KERASTUNER_TUNER_ID")
    if os.environ.get("KERASTUNER_ORACLE_IP") and worker != "chief":
        print(f"Worker {worker} done; the chief writes the results.")
        return True
    return False


def _write(args, markdown, record):
    """results.md and results.json in --output-dir, each written atomically."""
    from keras_egt.atomic import atomic_output

    os.makedirs(args.output_dir, exist_ok=True)
    with atomic_output(os.path.join(args.output_dir, "results.md"), ".md") as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(f"Objective: {args.objective} (validation split {args.validation_split:g} "
                    f"of {args.data}, threshold {args.threshold:g}).\n\n{markdown}")
    with atomic_output(os.path.join(args.output_dir, "results.json"), ".json") as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"objective": args.objective, **record}, f, indent=1)


@contextlib.contextmanager
def _quiet_rejections():
    """Keeps KerasTuner from printing a traceback for every rejected trial.

    KerasTuner 1.4.8 prints each failed trial's traceback while its (private)
    `config.DEBUG` is on, its default; a rejection is a result here, listed in the
    table, not an error.
    """
    try:
        from keras_tuner.src import config
    except ImportError:  # another KerasTuner layout: its tracebacks stay
        yield
        return
    debug, config.DEBUG = config.DEBUG, False
    try:
        yield
    finally:
        config.DEBUG = debug


def _budgeted_search(args, x, y, num_classes, lambdas, rates):
    from keras_egt import arch_search, tuning

    hypermodel = arch_search.BudgetedHyperModel(
        num_classes, x.shape[1:], space=args.space, flash_budget=args.flash_budget,
        arena_budget=args.arena_budget, accuracy_floor=args.accuracy_floor, lambdas=lambdas,
        learning_rates=rates, threshold=args.threshold)
    # Rejections are FAILED trials: none may stop the search. Any other error in a
    # trial still stops it (BudgetedHyperModel raises FatalError for those).
    tuner = _make_tuner(args, hypermodel, tuning.objective(args.objective),
                        max_consecutive_failed_trials=None)
    x_train, y_train, validation = tuning._split(x, y, args.validation_split)
    with _quiet_rejections():
        tuner.search(x_train, y_train, validation_data=validation, epochs=args.epochs,
                     batch_size=args.batch_size, verbose=args.verbose)
    if _is_worker():
        return 0

    results = arch_search.budget_results(tuner, validation, timing_samples=args.timing_samples)
    markdown = results.to_markdown()
    _write(args, markdown, results.to_dict())
    print(markdown)
    best = results.best()
    if best is None:
        if not results:
            smallest = min(results.rejected, key=lambda r: r["flash_bytes"], default=None)
            raise CLIError(
                "every trial was over budget, none was trained"
                + (f" (the smallest flash estimate: {smallest['flash_bytes']:,} bytes, its "
                   f"arena {smallest['arena_bytes']:,} bytes)" if smallest else "")
                + ": raise --flash-budget/--arena-budget or give more --max-trials.")
        top = max(r["cascade_accuracy"] for r in results)
        raise CLIError(
            f"no trained trial reached the accuracy floor of {100 * args.accuracy_floor:g}% "
            f"(the best: {100 * top:.2f}%), so no best.keras: lower --accuracy-floor, train "
            f"longer (--epochs) or search more (--max-trials). results.md lists the trials.")
    model = tuner.load_model(tuner.oracle.trials[best["trial_id"]])
    common.save_model(model, os.path.join(args.output_dir, "best.keras"))
    print(f"Best: {best['stages']} (attention_hidden_channels "
          f"{best['attention_hidden_channels']}, λ = {best['consistency_weight']:g}): "
          f"{100 * best['cascade_accuracy']:.2f}% at {best['cascade_speedup']:.2f}x MACs. "
          f"Wrote results.md, results.json and best.keras to {args.output_dir}/.")
    return 0
