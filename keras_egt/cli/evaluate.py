"""`keras-egt evaluate`: the paper's Tables I and II for a trained model.

    keras-egt evaluate egt.keras --data radar --threshold 0.9 --json report.json
    keras-egt evaluate egt.keras --data my_data.npz --threshold 0.95 0.9 0.9 0.85
    keras-egt evaluate egt.keras --data radar --calibrate 0.01 --confidence 0.9

prints per-exit consistency and accuracy, the cascade's accuracy, exit shares, MACs,
speedup and batch-1 ms/sample with and without early exit, as markdown.

`--calibrate EPS` replaces `--threshold` by thresholds certified on held-out users
(`egt.calibrate_thresholds`, Learn then Test over users): for the built-in data,
users simulated afresh (`radar_gestures.load_calibration_data`), never the training
users; for your own data, `--calibration-data cal.npz` with `x`, optional `y` (without
it: label-free, agreement with the last exit) and optional `groups` (user ids). The
certified bound is printed beside the drop measured on the evaluated split.
"""

from keras_egt import defaults
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
    parser.add_argument("--threshold", type=float, nargs="+", default=None, metavar="T",
                        help="cascade threshold: one for every exit (default 0.9, the "
                        "paper's) or one per early exit (K - 1 values, or K with the last ignored)")
    parser.add_argument("--criterion", choices=("max_probability", "entropy"),
                        default="max_probability",
                        help="exit rule: max softmax probability >= T (the paper's), or "
                        "1 - normalised entropy >= T (default max_probability)")
    calibrate = parser.add_argument_group("calibration (instead of --threshold)")
    calibrate.add_argument("--calibrate", type=float, default=None, metavar="EPS",
                           help="certify thresholds for an accuracy drop of at most EPS "
                           "(fraction, e.g. 0.01 = 1 point) on held-out users")
    calibrate.add_argument("--confidence", type=float, default=0.9,
                           help="probability that the promise holds (default 0.9)")
    calibrate.add_argument("--label-free", action="store_true",
                           help="certify disagreement with the last exit instead (no labels)")
    calibrate.add_argument("--calibration-users", type=int, default=defaults.CALIBRATION_USERS,
                           help=f"radar only: fresh users simulated for calibration (default "
                           f"{defaults.CALIBRATION_USERS})")
    calibrate.add_argument("--samples-per-user", type=int, default=3,
                           help="radar only: samples per calibration user (default 3)")
    calibrate.add_argument("--calibration-data", default=None, metavar="PATH.npz",
                           help="your own calibration set: an .npz with x, optional y and "
                           "groups (user ids); from users the model was not trained on")
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
    _check_flags(args)
    if args.json:
        common.check_output_file(args.json, "--json", inputs=[args.model, args.data,
                                                             args.calibration_data])
    model = common.load_model(args.model)
    x, y = common.split(args, common.load_dataset(args))
    common.check_compatible(model, x, f"{args.data} ({args.split})")

    from keras_egt import evaluation
    from keras_egt.cli.export import parse_thresholds

    threshold = parse_thresholds(args.threshold or [0.9], model)
    calibrated = None
    if args.calibrate is not None:
        calibrated = threshold = calibrate(model, args)
    report = evaluation.evaluate(model, x, y, threshold=threshold, criterion=args.criterion,
                                 timing=not args.no_timing, timing_samples=args.timing_samples,
                                 batch_size=args.batch_size, name=args.name)
    print(report.to_markdown())
    if calibrated is not None:
        print("\n" + calibration_line(calibrated, report, args.split))
    if args.json:
        if calibrated is None:
            report.to_json(args.json)
        else:
            import json

            from keras_egt import atomic

            data = dict(report.to_dict(), calibration=calibrated.to_dict())
            atomic.write_text(args.json, json.dumps(data, indent=2) + "\n")
        print(f"\nWrote {args.json}.")
    return 0


def _check_flags(args):
    """Refuses flags that contradict each other (one would be silently ignored)."""
    if args.calibrate is not None and args.threshold is not None:
        raise CLIError("--threshold and --calibrate conflict: --calibrate computes the "
                       "thresholds. Pass one of them.")
    if args.calibrate is None and args.calibration_data is not None:
        raise CLIError("--calibration-data is only used with --calibrate EPS; add --calibrate "
                       "or drop --calibration-data.")


def calibration_set(model, args):
    """`(x, y or None, groups or None, where)`: the held-out calibration data."""
    import numpy as np

    if args.calibration_data:
        path = args.calibration_data
        try:
            with np.load(path, allow_pickle=False) as data:
                if "x" not in data.files:
                    raise CLIError(f"--calibration-data {path} has no array 'x' (its arrays: "
                                   f"{', '.join(data.files)}).")
                x = data["x"].astype("float32")
                y = data["y"] if "y" in data.files else None
                groups = data["groups"] if "groups" in data.files else None
        except (OSError, ValueError) as error:
            raise CLIError(f"cannot read --calibration-data {path}: {error}") from None
        if x.ndim == 3:
            x = x[..., None]
        common.check_compatible(model, x, path)
        where = f"{len(x)} samples of {path}" + (
            f" ({len(np.unique(groups))} groups)" if groups is not None else "")
        return x, y, groups, where
    if args.data != "radar":
        raise CLIError("--calibrate with your own --data needs --calibration-data PATH.npz: "
                       "samples of users the model was not trained on.")
    if args.calibration_users < 2 or args.samples_per_user < 1:
        raise CLIError("--calibration-users must be >= 2 and --samples-per-user >= 1.")
    from keras_egt.datasets import radar_gestures

    x, y, users = radar_gestures.load_calibration_data(
        num_users=args.calibration_users, samples_per_user=args.samples_per_user,
        seed=args.data_seed)
    common.check_compatible(model, x, "radar calibration users")
    return x, y, users, f"{len(x)} samples of {args.calibration_users} held-out users"


def calibrate(model, args):
    """Thresholds certified on the held-out calibration set (`--calibrate`)."""
    from keras_egt import calibration

    x, y, groups, where = calibration_set(model, args)
    label_free = args.label_free or y is None
    try:
        if label_free:
            cal = calibration.calibrate_thresholds(
                model, x, None, max_disagreement=args.calibrate, confidence=args.confidence,
                groups=groups, criterion=args.criterion, batch_size=args.batch_size)
        else:
            cal = calibration.calibrate_thresholds(
                model, x, y, args.calibrate, confidence=args.confidence, groups=groups,
                criterion=args.criterion, batch_size=args.batch_size)
    except ValueError as error:
        raise CLIError(str(error)) from None
    cal.where = where
    return cal


def calibration_line(cal, report, split):
    """The certified bound beside the drop measured on the evaluated data."""
    drop = 100 * (report.final_accuracy - report.accuracy)
    return (f"Calibrated on {getattr(cal, 'where', f'{cal.num_samples} samples')}: "
            f"{cal.describe()} Measured on the {split} split: {drop:.2f}-point drop "
            f"({100 * report.accuracy:.2f}% with early exit vs {100 * report.final_accuracy:.2f}% "
            f"without), {report.mac_speedup:.2f}x MAC speedup.")
