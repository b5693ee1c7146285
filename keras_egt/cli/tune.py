"""`keras-egt tune`: KerasTuner search of λ, alone or as one process of a distributed search.

    keras-egt tune --data radar --lambdas 0,0.1,0.2,0.3,0.4,0.5 --epochs 50 --output-dir tune
    KERASTUNER_TUNER_ID=chief KERASTUNER_ORACLE_IP=10.0.0.1 KERASTUNER_ORACLE_PORT=8000 keras-egt tune ...
    KERASTUNER_TUNER_ID=tuner0 KERASTUNER_ORACLE_IP=10.0.0.1 KERASTUNER_ORACLE_PORT=8000 keras-egt tune ...

Trials are ranked on a validation split held out of the training data (the test
split stays unseen). The search lives in --directory/--project-name, so a stopped
search resumes where it stopped; the results land in --output-dir: `results.md`
(Table I per trial), `results.json`, `pareto.png` and `best.keras`.
"""

import json
import os

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
    from keras_egt.tuning import DEFAULT_LAMBDAS, OBJECTIVES

    parser = subparsers.add_parser(
        "tune", help="KerasTuner search of λ (Table I per trial, Pareto front, best model)",
        description="Searches the consistency weight λ with KerasTuner, ranking trials on a "
        "validation split of the training data. Set KERASTUNER_TUNER_ID, "
        "KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT to run it as the chief or a "
        "worker of KerasTuner's distributed search; run the same command in every process.")
    common.add_data_arguments(parser)
    parser.add_argument("--widths", default="paper",
                        help="'paper', 'micro' or 5 comma-separated ints (default paper)")
    parser.add_argument("--lambdas", default=",".join(f"{v:g}" for v in DEFAULT_LAMBDAS),
                        help="comma-separated λ values to search (default the paper's "
                        "0.1-0.5 and the baseline 0)")
    parser.add_argument("--learning-rates", default=None,
                        help="comma-separated learning rates to search as well (default: "
                        "the paper's 1e-3 only)")
    parser.add_argument("--tuner", choices=TUNERS, default="grid",
                        help="KerasTuner algorithm (default grid: every λ once)")
    parser.add_argument("--objective", choices=sorted(OBJECTIVES), default="score",
                        help="how trials are ranked: score (harmonic mean of validation "
                        "cascade accuracy and consistency), consistency, cascade_accuracy, "
                        "final_accuracy or cascade_speedup (default score)")
    parser.add_argument("--max-trials", type=int, default=None,
                        help="trials at most (default: one per grid point; 10 for random "
                        "and bayesian)")
    parser.add_argument("--epochs", type=int, default=50,
                        help="epochs per trial (hyperband: the most any trial gets; default 50)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    parser.add_argument("--validation-split", type=float, default=0.15,
                        help="fraction of the (shuffled) training data held out to rank "
                        "trials (default 0.15)")
    parser.add_argument("--threshold", type=float, default=0.9,
                        help="threshold of the validation cascade (default 0.9)")
    parser.add_argument("--directory", default="runs",
                        help="KerasTuner's directory (default runs)")
    parser.add_argument("--project-name", default="lambda",
                        help="KerasTuner's project name (default lambda)")
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
    parser.set_defaults(func=tune_command)


def _make_tuner(args, hypermodel, objective):
    import keras_tuner as kt

    common_args = dict(objective=objective, directory=args.directory,
                       project_name=args.project_name, overwrite=args.overwrite,
                       seed=args.seed,
                       # A failed trial stops the search instead of leaving a hole.
                       max_consecutive_failed_trials=1)
    if args.tuner == "hyperband":
        return kt.Hyperband(hypermodel, max_epochs=args.epochs, **common_args)
    from keras_egt import tuning

    cls = {"grid": tuning.GridSearch, "random": kt.RandomSearch,
           "bayesian": kt.BayesianOptimization}[args.tuner]
    max_trials = args.max_trials or (None if args.tuner == "grid" else 10)
    return cls(hypermodel, max_trials=max_trials, **common_args)


def tune_command(args):
    """Handler of `keras-egt tune`; returns the exit code."""
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}.")
    if args.max_trials is not None and args.max_trials < 1:
        raise CLIError(f"--max-trials must be >= 1, got {args.max_trials}.")
    if not 0 < args.validation_split < 1:
        raise CLIError(f"--validation-split must lie in (0, 1), got {args.validation_split}.")
    widths = common.parse_widths(args.widths)
    lambdas = _floats(args.lambdas, "--lambdas")
    rates = _floats(args.learning_rates, "--learning-rates") if args.learning_rates else None
    (x, y), _ = common.load_dataset(args)

    import keras
    import numpy as np

    from keras_egt import plots, tuning
    from keras_egt.atomic import atomic_output

    keras.utils.set_random_seed(args.seed)
    order = np.random.default_rng(args.seed).permutation(len(x))
    x, y = x[order], y[order]
    num_classes = common.num_classes(args, y)
    hypermodel = tuning.EGTHyperModel(num_classes, x.shape[1:], widths=widths,
                                      lambdas=lambdas, learning_rates=rates,
                                      threshold=args.threshold)
    tuner = _make_tuner(args, hypermodel, tuning.objective(args.objective))
    tuner.search(x, y, validation_split=args.validation_split, epochs=args.epochs,
                 batch_size=args.batch_size, verbose=args.verbose)
    worker = os.environ.get("KERASTUNER_TUNER_ID")
    if os.environ.get("KERASTUNER_ORACLE_IP") and worker != "chief":
        print(f"Worker {worker} done; the chief writes the results.")
        return 0

    table = tuning.results_table(tuner)
    if not table:
        raise CLIError("the search finished without a completed trial.")
    os.makedirs(args.output_dir, exist_ok=True)
    markdown = table.to_markdown()
    with atomic_output(os.path.join(args.output_dir, "results.md"), ".md") as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(f"Objective: {args.objective} (validation split {args.validation_split:g} "
                    f"of {args.data}, threshold {args.threshold:g}).\n\n{markdown}")
    with atomic_output(os.path.join(args.output_dir, "results.json"), ".json") as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"objective": args.objective, "trials": list(table)}, f, indent=1)
    plots.pareto_plot(table, os.path.join(args.output_dir, "pareto.png"))
    best = tuner.get_best_models(1)[0]
    common.save_model(best, os.path.join(args.output_dir, "best.keras"))
    print(markdown)
    print(f"Best: λ = {best.consistency_weight:g}. Wrote results.md, results.json, pareto.png "
          f"and best.keras to {args.output_dir}/.")
    return 0

