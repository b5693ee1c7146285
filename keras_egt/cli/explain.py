"""`keras-egt explain`: what every exit looks at, as a PNG.

    keras-egt explain egt.keras --data radar --output attention.png --num-samples 8

draws the first samples of a split with every exit's attention map overlaid,
one row per sample, each map titled with its exit's prediction and its cosine with
the final exit's map.
"""

from keras_egt.cli import CLIError
from keras_egt.cli import evaluate as evaluate_cli
from keras_egt.cli import train as common


def register(subparsers):
    """Adds the `explain` command to `subparsers`."""
    parser = subparsers.add_parser(
        "explain", help="draw every exit's attention map over some inputs (PNG)",
        description="Writes a PNG grid: one row per sample, its input and then the "
        "attention maps of every exit overlaid, titled with each exit's prediction and "
        "the cosine of its map with the final exit's.")
    evaluate_cli.add_model_arguments(parser)
    parser.add_argument("--output", "-o", default="attention.png",
                        help="the PNG to write (default attention.png)")
    parser.add_argument("--num-samples", type=int, default=8,
                        help="rows: samples drawn (default 8)")
    parser.add_argument("--start", type=int, default=0,
                        help="index of the first sample drawn (default 0)")
    parser.add_argument("--channel", type=int, default=0,
                        help="input channel drawn under the maps (default 0)")
    parser.set_defaults(func=explain_command)


def explain_command(args):
    """Handler of `keras-egt explain`; returns the exit code."""
    if not args.output.lower().endswith(".png"):
        raise CLIError(f"--output must be a .png file, got {args.output!r}.")
    if args.num_samples < 1 or args.start < 0:
        raise CLIError("--num-samples must be >= 1 and --start >= 0.")
    common.check_output_file(args.output, "--output", inputs=[args.model, args.data])
    model = common.load_model(args.model)
    x, y = common.split(args, common.load_dataset(args))
    common.check_compatible(model, x, f"{args.data} ({args.split})")
    if args.start >= len(x):
        raise CLIError(f"--start {args.start} is past the {len(x)} samples of the {args.split} split.")
    if not 0 <= args.channel < x.shape[-1]:
        raise CLIError(f"--channel must be in 0..{x.shape[-1] - 1}, got {args.channel}.")
    stop = min(len(x), args.start + args.num_samples)

    from keras_egt import plots

    names = None
    if args.data == "radar":
        from keras_egt.datasets import radar_gestures

        names = radar_gestures.CLASS_NAMES
    plots.attention_grid(model, x[args.start : stop], args.output, y=y[args.start : stop],
                         class_names=names, channel=args.channel)
    print(f"Wrote {args.output} ({stop - args.start} samples x {model.num_exits} exits).")
    return 0
