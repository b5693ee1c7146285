"""`keras-egt evaluate`: the paper's Tables I and II for a trained model.

    keras-egt evaluate egt.keras --data radar --threshold 0.9 --json report.json
    keras-egt evaluate egt.keras --data my_data.npz --threshold 0.95 0.9 0.9 0.85

prints per-exit consistency and accuracy, the cascade's accuracy, exit shares, MACs,
speedup and batch-1 ms/sample with and without early exit, as markdown.
"""

from keras_egt.cli import CLIError
from keras_egt.cli import train as common


def add_model_arguments(parser, split_default="test"):
    """Adds the positional MODEL, the data options and --split to `parser`."""
    parser.add_argument("model", metavar="MODEL.keras", help="a model saved by keras-egt train")
    common.add_data_arguments(parser)
    parser.add_argument("--split", choices=("test", "train"), default=split_default,
                        help=f"which split of the data to use (default {split_default})")


def register(subparsers):
    """Adds the `evaluate` command to `subparsers`."""
    parser = subparsers.add_parser(
        "evaluate", help="per-exit accuracy and consistency, cascade speedup (Tables I, II)",
        description="Evaluates a trained early-exit model: attention consistency of every "
        "early exit with the final one (and its chance floor), accuracy of every exit, the "
        "confident-exit cascade's accuracy, exit shares, MACs, speedup and the oracle bound, "
        "and batch-1 time per sample with and without early exit. Prints markdown tables in "
        "the paper's layout.")
    add_model_arguments(parser)
    parser.add_argument("--threshold", type=float, nargs="+", default=[0.9], metavar="T",
                        help="cascade threshold: one for every exit (default 0.9, the "
                        "paper's) or one per early exit (K - 1 values, or K with the last ignored)")
    parser.add_argument("--criterion", choices=("max_probability", "entropy"),
                        default="max_probability",
                        help="exit rule: max softmax probability >= T (the paper's), or "
                        "1 - normalised entropy >= T (default max_probability)")
    parser.add_argument("--no-timing", action="store_true",
                        help="skip the batch-1 wall-clock timing (Table II times show '–')")
    parser.add_argument("--timing-samples", type=int, default=200,
                        help="samples timed one by one, at most (default 200)")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="batch size of the untimed evaluation pass (default 64)")
    parser.add_argument("--name", default=None,
                        help="row label in the tables (default 'Baseline' for λ = 0, "
                        "else 'EGT (λ = ...)')")
    parser.add_argument("--json", default=None, metavar="PATH",
                        help="also write the full report as JSON to PATH")
    parser.set_defaults(func=evaluate_command)


def evaluate_command(args):
    """Handler of `keras-egt evaluate`; returns the exit code."""
    if args.timing_samples < 1 or args.batch_size < 1:
        raise CLIError("--timing-samples and --batch-size must be >= 1.")
    model = common.load_model(args.model)
    x, y = common.split(args, common.load_dataset(args))
    common.check_compatible(model, x, f"{args.data} ({args.split})")

    from keras_egt import evaluation

    threshold = args.threshold[0] if len(args.threshold) == 1 else args.threshold
    report = evaluation.evaluate(model, x, y, threshold=threshold, criterion=args.criterion,
                                 timing=not args.no_timing, timing_samples=args.timing_samples,
                                 batch_size=args.batch_size, name=args.name)
    print(report.to_markdown())
    if args.json:
        report.to_json(args.json)
        print(f"\nWrote {args.json}.")
    return 0
