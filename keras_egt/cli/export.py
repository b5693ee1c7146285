"""`keras-egt export` and `keras-egt run-tflite`: the int8 TFLite cascade for microcontrollers.

    keras-egt export egt.keras deploy/ --data radar --threshold 0.9 --num-calibration 256
    keras-egt export egt.keras deploy_qat/ --data radar --qat --qat-epochs 3
    keras-egt run-tflite deploy/ --data radar --runtime tflm --model egt.keras

`export` writes one full-int8 segment per exit, manifest.json and the firmware C sources;
`run-tflite` runs them as a cascade on TFLM or LiteRT and prints the accuracy, exit
shares, time per sample and the size report (and the agreement with the float model
when given --model).
"""



from keras_egt.cli import CLIError
from keras_egt.cli import train as common


def register(subparsers):
    """Adds the `export` and `run-tflite` commands to `subparsers`."""
    parser = subparsers.add_parser(
        "export", help="export a trained model as int8 TFLite segments (one per exit) + firmware sources",
        description="Splits a trained early-exit model into full-int8 TFLite segments (one per exit) "
        "(calibrated on training data), checks every op is int8 and the int8 feature handoff "
        "between segments needs no requantization, measures each segment's TFLM arena, and "
        "writes manifest.json and the C sources for firmware (model_data.c/.h, egt_manifest.h). "
        "Needs TensorFlow (pip install keras-egt[deploy]).")
    parser.add_argument("model", metavar="MODEL.keras", help="a model saved by keras-egt train")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="the deploy folder to create")
    common.add_data_arguments(parser)
    parser.add_argument("--threshold", type=float, nargs="+", default=[0.9], metavar="T",
                        help="exit threshold on the max probability: one for every exit "
                        "(default 0.9) or one per early exit (K - 1 values, or K with the last unused)")
    parser.add_argument("--num-calibration", type=int, default=256,
                        help="training samples used to calibrate the int8 ranges (default 256)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the calibration subset and of the QAT shuffling (default 0)")
    parser.add_argument("--qat", action="store_true",
                        help="quantization-aware fine-tuning (tfmot) on the training split first")
    parser.add_argument("--qat-epochs", type=int, default=3, help="QAT epochs (default 3)")
    parser.add_argument("--qat-learning-rate", type=float, default=1e-4,
                        help="QAT Adam learning rate (default 1e-4)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT_DIR")
    parser.set_defaults(func=export_command)

    run = subparsers.add_parser(
        "run-tflite", help="run an exported int8 cascade on TFLM or LiteRT",
        description="Runs a deploy folder written by `keras-egt export` as a confident-exit "
        "cascade, one sample at a time, on TensorFlow Lite Micro's Python interpreter or "
        "LiteRT, and prints accuracy, exit shares, time per sample and the size report. "
        "When the other runtime is installed too, it runs the same samples on it and "
        "reports how far the two agree.")
    run.add_argument("deploy_dir", metavar="DEPLOY_DIR", help="a folder written by keras-egt export")
    common.add_data_arguments(run)
    run.add_argument("--split", choices=("test", "train"), default="test",
                     help="which split of the data to run (default test)")
    run.add_argument("--runtime", choices=("tflm", "litert"), default="tflm",
                     help="interpreter (default tflm)")
    run.add_argument("--limit", type=int, default=None, help="run only the first N samples")
    run.add_argument("--model", metavar="MODEL.keras", default=None,
                     help="also run this float model's Keras cascade and report the agreement")
    run.set_defaults(func=run_command)


def _calibration_subset(x, count, seed):
    import numpy as np

    if count < 1:
        raise CLIError(f"--num-calibration must be >= 1, got {count}.")
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(x), size=min(count, len(x)), replace=False))
    return x[rows]


def parse_thresholds(values, model):
    """The --threshold values, checked against the model's number of exits."""
    from keras_egt.exit_rule import resolve_thresholds

    threshold = values[0] if len(values) == 1 else list(values)
    try:
        resolve_thresholds(threshold, model.num_exits)
    except ValueError as error:
        raise CLIError(f"--threshold: {error}") from None
    return threshold


def _class_names(args, num_classes):
    if args.data != "radar":
        return None
    from keras_egt.datasets import radar_gestures

    names = list(radar_gestures.CLASS_NAMES)
    return names if len(names) == num_classes else None


def export_command(args):
    """Handler of `keras-egt export`; returns the exit code."""
    import keras

    from keras_egt import export
    from keras_egt.export import exporter

    if args.qat_epochs < 1 or args.qat_learning_rate <= 0:
        raise CLIError("--qat-epochs must be >= 1 and --qat-learning-rate > 0.")
    # Before loading anything: a folder that may not be replaced is refused at once.
    exporter._check_out_dir(args.out_dir, args.overwrite,
                            inputs=[args.model] + ([] if args.data == "radar" else [args.data]))
    model = common.load_model(args.model)
    threshold = parse_thresholds(args.threshold, model)
    (x_train, y_train), _ = common.load_dataset(args)
    if len(x_train) == 0:
        raise CLIError(f"{args.data} holds no training samples to calibrate on.")
    common.check_compatible(model, x_train, f"{args.data} (train)")
    calibration = _calibration_subset(x_train, args.num_calibration, args.seed)
    names = _class_names(args, model.num_classes)
    print(f"Exporting {args.model} to {args.out_dir} (backend {keras.backend.backend()}, "
          f"{len(calibration)} calibration samples{', QAT' if args.qat else ''}).")
    if args.qat:
        keras.utils.set_random_seed(args.seed)
        manifest = export.quantization_aware_export(
            model, args.out_dir, x_train, y_train, representative_data=calibration,
            threshold=threshold, epochs=args.qat_epochs, learning_rate=args.qat_learning_rate,
            class_names=names, overwrite=args.overwrite, verbose=True)
    else:
        manifest = export.export_cascade(model, args.out_dir, calibration, threshold=threshold,
                                         class_names=names, overwrite=args.overwrite, verbose=True)
    print()
    print(export.format_report(manifest, title=args.out_dir))
    return 0


def _compare_runtimes(args, runner, x, labels, exits):
    """Runs the other runtime on the same samples and prints how far they agree.

    They need not agree exactly: their int8 kernels may round a result one step
    apart, which can move a sample near a threshold to another exit (see
    tflite/README.md, "TFLM and LiteRT"). Reported, not hidden.
    """
    import numpy as np

    from keras_egt import export

    other = "litert" if args.runtime == "tflm" else "tflm"
    try:
        other_runner = export.load_cascade(args.deploy_dir, runtime=other)
    except ImportError as error:
        print(f"  {other}: not installed, no cross-check ({str(error).splitlines()[0][:120]})")
        return
    other_labels, other_exits = other_runner.predict(x)
    differ = int(np.sum((other_labels != labels) | (other_exits != exits)))
    print(f"  agreement with {other} on the same samples: labels "
          f"{100 * np.mean(other_labels == labels):.2f}%, exits "
          f"{100 * np.mean(other_exits == exits):.2f}% ({differ} of {len(x)} samples differ"
          + ("; int8 kernels may round one step apart, see tflite/README.md)" if differ else ")"))


def run_command(args):
    """Handler of `keras-egt run-tflite`; returns the exit code."""
    import numpy as np

    from keras_egt import export

    runner = export.load_cascade(args.deploy_dir, runtime=args.runtime)
    (x_train, y_train), (x_test, y_test) = common.load_dataset(args)
    x, y = (x_test, y_test) if args.split == "test" else (x_train, y_train)
    if args.limit is not None:
        if args.limit < 1:
            raise CLIError(f"--limit must be >= 1, got {args.limit}.")
        x, y = x[: args.limit], y[: args.limit]
    if len(x) == 0:
        raise CLIError(f"the {args.split} split of {args.data} holds no samples.")
    if tuple(x.shape[1:]) != runner.input_shape:
        raise CLIError(f"{args.data} has samples of shape {tuple(x.shape[1:])}, the cascade "
                       f"was exported for {runner.input_shape}.")
    labels, exits = runner.predict(x)
    shares = np.bincount(exits, minlength=runner.num_segments) / len(exits)
    macs = np.cumsum([seg.get("macs", 0) for seg in runner.manifest["segments"]])
    print(f"int8 cascade on {args.runtime}, {len(x)} {args.split} samples of {args.data}:")
    print(f"  accuracy {100 * np.mean(labels == y):.2f}%")
    print("  exit shares " + ", ".join(f"exit {k + 1} {100 * s:.1f}%" for k, s in enumerate(shares)))
    print(f"  mean MACs per sample {np.mean(macs[exits]):,.0f} (all {runner.num_segments} segments: {macs[-1]:,})")
    print(f"  time per sample {1000 * np.mean(runner.last_seconds):.3f} ms (host, {args.runtime} "
          "Python interpreter)")
    _compare_runtimes(args, runner, x, labels, exits)
    if args.model:
        from keras_egt.cascade import Cascade

        model = common.load_model(args.model)
        common.check_compatible(model, x, args.data)
        thresholds = runner.manifest["thresholds"]
        float_labels, float_exits = Cascade(model, threshold=thresholds).predict(x)
        print(f"  float Keras cascade ({args.model}): accuracy "
              f"{100 * np.mean(float_labels == y):.2f}%; agreement with int8: labels "
              f"{100 * np.mean(labels == float_labels):.2f}%, exits "
              f"{100 * np.mean(exits == float_exits):.2f}%")
    print()
    print(runner.report())
    return 0
