"""`keras-egt data`: look at the data a model will be trained on.

    keras-egt data show [--output radar_gestures.png] [--seed 0] [--num-train 1363]
    keras-egt data show --data my_radar.npz         # your own data instead

writes one example per class and channel as a PNG.
"""

import argparse
import sys

from keras_egt import atomic, defaults


def register(subparsers):
    """Adds the `data` command and its `show` subcommand to `subparsers`."""
    parser = subparsers.add_parser("data", help="inspect the built-in or your own data",
                                   description=__doc__.splitlines()[0])
    actions = parser.add_subparsers(dest="data_command", metavar="ACTION")
    actions.required = True
    show = actions.add_parser(
        "show", help="write a PNG with one example per class and channel",
        description="Writes a PNG with one example of every class, one row per channel "
        "(time runs left to right).")
    show.add_argument("--output", "-o", default="radar_gestures.png", help="PNG to write")
    source = show.add_mutually_exclusive_group()
    source.add_argument("--data", dest="npz", metavar="PATH.npz",
                        help="show an .npz data set instead of the built-in one")
    # The old name, kept working but no longer shown: --data, like every other command.
    source.add_argument("--npz", dest="npz", help=argparse.SUPPRESS)
    source.add_argument("--folder", help="show a folder data set (one sub-folder per class)")
    show.add_argument("--seed", type=int, default=0, help="seed of the built-in set")
    show.add_argument("--num-train", type=int, default=defaults.NUM_TRAIN,
                      help="training samples of the built-in set (default: the default set)")
    show.add_argument("--num-test", type=int, default=defaults.NUM_TEST,
                      help="test samples of the built-in set")
    show.add_argument("--snr-db", type=float, nargs=2, default=(5.0, 25.0),
                      metavar=("LOW", "HIGH"), help="SNR range of the built-in set, dB")
    show.add_argument("--no-cache", action="store_true", help="do not read or write the cache")
    show.set_defaults(func=show_command)


def _error(message):
    print(f"keras-egt data show: error: {message}", file=sys.stderr)
    return 2


def show_command(args):
    """Handler of `keras-egt data show`; returns the exit code."""
    from keras_egt.cli import train as common
    from keras_egt.datasets import loaders, radar_gestures

    if not args.output.lower().endswith(".png"):
        return _error(f"--output must be a .png file, got {args.output!r}.")
    common.check_output_file(args.output, "--output", inputs=[args.npz])
    if args.npz:
        common.check_input_file(args.npz, "data file")
    try:
        if args.npz or args.folder:
            if args.folder:
                (x, y), _, names = loaders.load_folder(args.folder, return_class_names=True)
            else:
                (x, y), _ = loaders.load_npz(args.npz)
                names = [str(c) for c in range(int(y.max()) + 1)]
            channel_names = [f"channel {c}" for c in range(x.shape[-1])]
            source = args.npz or args.folder
        else:
            (x, y), _ = radar_gestures.load_data(
                num_train=args.num_train, num_test=args.num_test, seed=args.seed,
                snr_db=tuple(args.snr_db), cache=not args.no_cache)
            names = list(radar_gestures.CLASS_NAMES)
            channel_names = ["Doppler-time", "angle-time (az | el)"]
            source = "built-in radar gestures"
    except (ValueError, FileNotFoundError) as error:
        return _error(error)
    if not args.output.lower().endswith(".png"):
        return _error(f"--output must be a .png file, got {args.output!r}.")

    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    num_classes, channels = len(names), x.shape[-1]
    fig, axes = plt.subplots(channels, num_classes, squeeze=False,
                             figsize=(1.6 * num_classes + 0.6, 1.7 * channels + 0.6))
    for c, name in enumerate(names):
        index = next(iter(i for i in range(len(y)) if y[i] == c), None)
        for ch in range(channels):
            ax = axes[ch, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if index is not None:
                # Stored as (time, bins): transpose so time runs left to right.
                ax.imshow(x[index, :, :, ch].T, origin="lower", aspect="auto", cmap="viridis")
            if ch == 0:
                ax.set_title(name, fontsize=8)
            if c == 0 and ch < len(channel_names):
                ax.set_ylabel(channel_names[ch], fontsize=7)
    fig.suptitle(f"{source}: one training example per class", fontsize=9)
    fig.tight_layout()
    try:
        with atomic.atomic_output(args.output, ".png") as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    finally:
        plt.close(fig)
    print(f"Wrote {args.output} ({num_classes} classes x {channels} channels, from {source}).")
    return 0
