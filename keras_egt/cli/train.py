"""`keras-egt train`: train an early-exit CNN with Explanation-Guided Training.

    keras-egt train --data radar --lambda 0.3 --epochs 50 --output egt.keras
    keras-egt train --data my_data.npz --widths micro --lambda 0.3 --output egt.keras
    keras-egt train --data radar --model mcu --lambda 0.3 --output egt_mcu.keras

The paper's settings are the defaults: widths 64-128-256-512-512, 50 epochs, Adam at
1e-3 halved every 15 epochs; batch size 32 (the paper does not say). Also holds the
data and model options that `evaluate` and `explain` share.
"""

import os
import zipfile

from keras_egt import defaults
from keras_egt.cli import CLIError

DATA_HELP = (
    "'radar' for the built-in simulated 60 GHz radar gesture set (9 classes, 64x64x2), "
    "or the path of an .npz file with x_train, y_train and optionally x_test, y_test "
    "(default: radar)"
)


def add_data_arguments(parser):
    """Adds --data and the built-in set's options to `parser`."""
    group = parser.add_argument_group("data")
    group.add_argument("--data", default="radar", metavar="radar|PATH.npz", help=DATA_HELP)
    group.add_argument("--num-train", type=int, default=defaults.NUM_TRAIN,
                       help=f"radar only: training samples to simulate (default "
                       f"{defaults.NUM_TRAIN}, the paper's)")
    group.add_argument("--num-test", type=int, default=defaults.NUM_TEST,
                       help=f"radar only: test samples to simulate (default "
                       f"{defaults.NUM_TEST}, the paper's)")
    group.add_argument("--data-seed", type=int, default=0,
                       help="radar only: seed of the simulated set (default 0)")


def load_dataset(args):
    """`((x_train, y_train), (x_test, y_test))` from the parsed --data options."""
    from keras_egt.datasets import loaders, radar_gestures

    if args.data == "radar":
        check_radar_counts(args)
        return radar_gestures.load_data(num_train=args.num_train, num_test=args.num_test,
                                        seed=args.data_seed, verbose=1)
    if not args.data.lower().endswith(".npz"):
        raise CLIError(f"--data must be 'radar' or an .npz file, got {args.data!r}.")
    check_input_file(args.data, "data file")
    return loaders.load_npz(args.data)


def num_classes(args, *labels):
    """The class count: the built-in set's, else one more than the largest label."""
    if args.data == "radar":
        from keras_egt.datasets import radar_gestures

        return radar_gestures.NUM_CLASSES
    return int(max(y.max() for y in labels if len(y))) + 1


def parse_widths(text):
    """`"paper"`, `"micro"` or five comma-separated ints -> the `widths` argument (CLIError if bad)."""
    from keras_egt.cnn import WIDTH_PRESETS, resolve_widths

    try:
        widths = resolve_widths(text)
    except ValueError as error:
        raise CLIError(f"--widths: {error}") from None
    return text if text in WIDTH_PRESETS else widths


MODEL_HELP = (
    "the network: 'mcu' (EarlyExitMCU, four exits laid out for microcontrollers), "
    "an MCU stages string such as 'c8p s16p s32p | c64 | c96 | c96p', or the paper's "
    "five-block EarlyExitCNN: 'paper', 'micro' or 5 comma-separated widths"
)


def parse_model(text):
    """`--model` -> `("mcu", stages)` or `("cnn", widths)` (CLIError if bad).

    Example:
    >>> parse_model("mcu")
    ('mcu', 'mcu')
    >>> parse_model("4,8,8,16,16")
    ('cnn', (4, 8, 8, 16, 16))
    """
    from keras_egt.cnn import WIDTH_PRESETS
    from keras_egt.mcu import MCU_PRESETS, resolve_stages

    text = str(text).strip()
    if text in WIDTH_PRESETS or "," in text:
        return "cnn", parse_widths(text)
    try:
        stages = resolve_stages(text)
    except ValueError as error:
        raise CLIError(f"--model: {error} Or use the paper's CNN: 'paper', 'micro' or 5 "
                       "comma-separated widths.") from None
    return "mcu", text if text in MCU_PRESETS else stages


def build_model(model, num_classes, input_shape, consistency_weight):
    """The untrained model that `parse_model`'s result names."""
    import keras_egt as egt

    kind, value = model
    if kind == "mcu":
        return egt.EarlyExitMCU(num_classes, input_shape, stages=value,
                                consistency_weight=consistency_weight)
    return egt.EarlyExitCNN(num_classes, input_shape, widths=value,
                            consistency_weight=consistency_weight)


def describe_model(model):
    """One phrase naming a model's architecture, for messages and reports."""
    if hasattr(model, "stages_spec"):
        return "MCU stages " + " | ".join(" ".join(stage) for stage in model.stages_spec)
    if hasattr(model, "widths"):
        return f"widths {tuple(model.widths)}"
    return f"{model.num_exits} exits at {', '.join(model.exit_layers)}"


def parse_size(text, option):
    """A size option such as `--flash-budget 256KiB` -> bytes (None stays None; CLIError if bad)."""
    if text is None:
        return None
    from keras_egt.budget import parse_bytes

    try:
        return parse_bytes(text)
    except ValueError as error:
        raise CLIError(f"{option}: {error}") from None


def load_model(path):
    """Loads a `.keras` model saved by `keras-egt train`, with a one-line error."""
    import keras

    import keras_egt

    keras_egt.register_serializables()

    check_input_file(path, "model file")
    if not path.endswith(".keras"):
        raise CLIError(f"{path}: expected a .keras model file (written by keras-egt train).")
    if not zipfile.is_zipfile(path):
        raise CLIError(f"{path}: not a .keras file (a .keras model is a zip archive).")
    try:
        model = keras.saving.load_model(path)
    except Exception as error:  # zip, json and deserialisation errors vary
        if "safe_mode" in str(error) or "Lambda" in str(error):
            raise CLIError(
                f"{path}: refused because it holds a Lambda layer (or other Python code), "
                "which Keras' safe_mode does not load: loading it would run that code. If "
                "you trust the file, load it in Python with keras.saving.load_model(path, "
                "safe_mode=False)."
            ) from None
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CLIError(f"{path}: cannot load the model ({message}).") from error
    if not hasattr(model, "heads") or not hasattr(model, "stages"):
        raise CLIError(f"{path}: not a keras-egt early-exit model (EarlyExitModel, "
                       "EarlyExitCNN or EarlyExitMCU).")
    return model


def check_input_file(path, what):
    """Raises a one-line error unless `path` is an existing regular file.

    Args:
        path: the file to read.
        what: what it is, for the message (e.g. "model file").
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"No such {what}: {path}")
    if not os.path.isfile(path):
        kind = "a folder" if os.path.isdir(path) else "a special file (fifo, device, socket)"
        raise CLIError(f"{path}: not a regular file ({kind}); name the {what} itself.")


def check_output_file(path, option, inputs=()):
    """Raises a CLIError before any work if `path` cannot receive the output.

    Args:
        path: the file the command will write.
        option: the option that named it, for the message (e.g. "--output").
        inputs: files the command reads; the output must not replace one of them.
    """
    if os.path.isdir(path):
        raise CLIError(f"{option} {path} is an existing folder; name a file to write, e.g. "
                       f"{os.path.join(path, 'out')}.")
    if os.path.lexists(path) and not os.path.isfile(path):
        raise CLIError(f"{option} {path} is not a regular file; name a file to write.")
    for source in inputs:
        if source and os.path.exists(source) and os.path.realpath(source) == os.path.realpath(path):
            raise CLIError(f"{option} {path} is an input of this command; writing it would "
                           "destroy it. Name another file.")


# Largest --num-train / --num-test: 64x64x2 float32 samples take 32 KiB each, so
# this is about 32 GiB of samples (and more while simulating them).
MAX_RADAR_SAMPLES = 1_000_000


def check_radar_counts(args):
    """Refuses radar sample counts that cannot fit in memory, before simulating."""
    if getattr(args, "data", None) != "radar":
        return
    for option in ("num_train", "num_test"):
        value = getattr(args, option, None)
        if value is not None and value > MAX_RADAR_SAMPLES:
            raise CLIError(
                f"--{option.replace('_', '-')} {value} is too large: at most "
                f"{MAX_RADAR_SAMPLES:,} radar samples (each takes 32 KiB, so {value:,} "
                f"would need {value * 32 / 2**20:,.0f} GiB of memory). Choose a smaller count."
            )


def check_compatible(model, x, where):
    """Raises a CLIError unless `x` fits the model's input shape."""
    if tuple(x.shape[1:]) != tuple(model.image_shape):
        raise CLIError(
            f"{where} has samples of shape {tuple(x.shape[1:])} but the model expects "
            f"{tuple(model.image_shape)}."
        )


def split(args, data):
    """The (x, y) split chosen with --split, checked to be non-empty."""
    (x_train, y_train), (x_test, y_test) = data
    x, y = (x_test, y_test) if args.split == "test" else (x_train, y_train)
    if len(x) == 0:
        raise CLIError(f"the {args.split} split of {args.data} holds no samples; use --split train.")
    return x, y


def register(subparsers):
    """Adds the `train` command to `subparsers`."""
    parser = subparsers.add_parser(
        "train", help="train an early-exit CNN with EGT and save it as .keras",
        description="Trains an early-exit CNN with Explanation-Guided Training (λ > 0) or "
        "as the baseline (λ = 0) and saves it as a .keras file. The defaults are the "
        "paper's settings.")
    add_data_arguments(parser)
    parser.add_argument("--widths", default=None,
                        help="channels of the five blocks: 'paper' (64,128,256,512,512), "
                        "'micro' (8,16,32,64,64) or 5 comma-separated ints (default paper)")
    parser.add_argument("--model", default=None,
                        help=MODEL_HELP + " (default: the EarlyExitCNN of --widths)")
    parser.add_argument("--lambda", dest="consistency_weight", type=float,
                        default=defaults.CONSISTENCY_WEIGHT,
                        help=f"λ, weight of the attention-consistency loss; 0 trains the "
                        f"baseline (default {defaults.CONSISTENCY_WEIGHT:g})")
    parser.add_argument("--epochs", type=int, default=defaults.EPOCHS,
                        help=f"training epochs (default {defaults.EPOCHS})")
    parser.add_argument("--batch-size", type=int, default=defaults.BATCH_SIZE,
                        help=f"batch size (default {defaults.BATCH_SIZE})")
    parser.add_argument("--learning-rate", type=float, default=defaults.LEARNING_RATE,
                        help=f"Adam's initial learning rate (default {defaults.LEARNING_RATE:g})")
    parser.add_argument("--decay-every", type=int, default=defaults.DECAY_EVERY,
                        help=f"multiply the learning rate by --decay-factor every this many "
                        f"epochs (default {defaults.DECAY_EVERY})")
    parser.add_argument("--decay-factor", type=float, default=defaults.DECAY_FACTOR,
                        help=f"learning-rate factor of each step decay (default "
                        f"{defaults.DECAY_FACTOR:g})")
    parser.add_argument("--no-validation", action="store_true",
                        help="do not report test-split metrics after every epoch")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the weight initialisation and shuffling (default 0)")
    parser.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2),
                        help="Keras verbosity: 0 silent, 1 progress bar, 2 one line per "
                        "epoch (default 1)")
    parser.add_argument("--output", "-o", default="model.keras",
                        help="the .keras file to write (default model.keras)")
    parser.set_defaults(func=train_command)


def train_command(args):
    """Handler of `keras-egt train`; returns the exit code."""
    if not args.output.endswith(".keras"):
        raise CLIError(f"--output must end in .keras, got {args.output!r}.")
    check_output_file(args.output, "--output", inputs=[args.data])
    check_radar_counts(args)
    if args.model and args.widths is not None:
        kind = parse_model(args.model)[0]
        if kind != "cnn":
            raise CLIError(f"--widths {args.widths} only applies to the paper's CNN; --model "
                           f"{args.model} is an MCU model. Drop --widths, or pass the widths "
                           "as --model W1,W2,W3,W4,W5.")
    for name in ("epochs", "batch_size", "decay_every"):
        if getattr(args, name) < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}.")
    if not args.learning_rate > 0:
        raise CLIError(f"--learning-rate must be > 0, got {args.learning_rate}.")
    architecture = parse_model(args.model) if args.model else ("cnn", parse_widths(args.widths or "paper"))
    data = load_dataset(args)

    import keras

    import keras_egt as egt

    (x_train, y_train), (x_test, y_test) = data
    classes = num_classes(args, y_train, y_test)
    keras.utils.set_random_seed(args.seed)
    model = build_model(architecture, classes, x_train.shape[1:], args.consistency_weight)
    validation = None if args.no_validation or len(x_test) == 0 else (x_test, y_test)
    egt.recipe.fit(model, x_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
                   learning_rate=args.learning_rate, decay_every=args.decay_every,
                   decay_factor=args.decay_factor, validation_data=validation,
                   verbose=args.verbose)
    save_model(model, args.output)
    print(f"Saved {args.output} ({describe_model(model)}, λ = {model.consistency_weight:g}, "
          f"{classes} classes, trained on {len(x_train)} samples).")
    return 0


def save_model(model, path):
    """`model.save(path)` atomically (a temporary .keras next to it, then renamed)."""
    from keras_egt.atomic import atomic_output

    with atomic_output(path, ".keras") as tmp:
        model.save(tmp)
