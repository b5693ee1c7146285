"""`keras-egt demo`: the main job end to end on the built-in radar data."""

import json
import os
import shutil
import tempfile
import time
import warnings

from keras_egt import atomic, defaults
from keras_egt.cli.train import MODEL_HELP, build_model, describe_model, parse_model, parse_widths

# Finishes in well under 15 minutes on a 2-core CPU (see the report's header).
QUICK = {"model": "mcu", "epochs": 20, "step_every": 8}
# The paper's settings.
FULL = {"model": "paper", "epochs": defaults.EPOCHS, "step_every": defaults.DECAY_EVERY}
# Calibrated thresholds: at most 1 point lost to early exit, with probability 0.9, on
# users seen in neither training nor testing (3 gestures each; the bound runs over users).
CALIBRATION = {"max_accuracy_drop": 0.01, "confidence": 0.9, "samples_per_user": 3}


def register(subparsers):
    parser = subparsers.add_parser(
        "demo",
        help="train a baseline and an EGT model on the built-in radar data, evaluate, "
        "explain, export the int8 cascade and run it on TFLM",
        description="The whole keras-egt workflow on the built-in simulated 60 GHz radar "
        "gesture set: trains a baseline (λ = 0) and an EGT model, compares their "
        "attention consistency and early-exit speedup (the paper's Tables I and II), "
        "plots the attention maps, exports the EGT model as int8 TFLite segments "
        "(one per exit), runs them on the TensorFlow Lite Micro interpreter, and writes "
        "OUTPUT/report.md with every figure.",
    )
    parser.add_argument("--output", default="egt-demo", help="folder for the report, plots, models and the deploy/ cascade (default: egt-demo)")
    parser.add_argument("--full", action="store_true", help="the paper's settings: the paper's CNN (widths 64-512), 50 epochs, learning rate halved every 15 epochs; slow on a CPU")
    parser.add_argument("--model", help=MODEL_HELP + " (default mcu, or paper with --full)")
    parser.add_argument("--lambda", dest="consistency_weight", type=float, default=defaults.CONSISTENCY_WEIGHT, help=f"λ of the EGT model (default {defaults.CONSISTENCY_WEIGHT:g}, the paper's best)")
    parser.add_argument("--epochs", type=int, help="override the number of epochs (default 20, or 50 with --full); the learning rate is then halved every 30%% of them, as the paper does every 15 of 50")
    parser.add_argument("--widths", help='the paper\'s CNN at these widths instead: "paper", "micro" or 5 comma-separated ints')
    parser.add_argument("--threshold", type=float, default=defaults.THRESHOLD, help=f"confidence threshold of the cascade (default {defaults.THRESHOLD:g}, the paper's)")
    parser.add_argument("--num-train", type=int, default=defaults.NUM_TRAIN, help=f"simulated training samples (default {defaults.NUM_TRAIN}, as the paper)")
    parser.add_argument("--num-test", type=int, default=defaults.NUM_TEST, help=f"simulated test samples (default {defaults.NUM_TEST}, as the paper)")
    parser.add_argument("--batch-size", type=int, default=defaults.BATCH_SIZE, help=f"training batch size (default {defaults.BATCH_SIZE})")
    parser.add_argument("--no-export", action="store_true", help="skip the int8 export and the TFLM run (they need TensorFlow)")
    parser.add_argument("--seed", type=int, default=0, help="random seed for data split and initialisation")
    parser.add_argument("--calibration-users", type=int, default=defaults.CALIBRATION_USERS, help=f"fresh simulated users the thresholds are calibrated on (default {defaults.CALIBRATION_USERS}; never training or test users)")
    parser.set_defaults(func=run)


def run(args):
    settings = dict(FULL if args.full else QUICK)
    if args.epochs is not None:
        if args.epochs < 1:
            raise ValueError(f"--epochs must be >= 1, got {args.epochs}.")
        settings["epochs"] = args.epochs
        settings["step_every"] = defaults.decay_every(args.epochs)
    if args.model:
        settings["model"] = args.model
    architecture = ("cnn", parse_widths(args.widths)) if args.widths else parse_model(settings["model"])
    value = architecture[1]
    settings["preset"] = value if isinstance(value, str) else (
        ",".join(map(str, value)) if architecture[0] == "cnn" else
        " | ".join(" ".join(stage) for stage in value))
    if args.consistency_weight <= 0:
        raise ValueError("--lambda must be > 0 for the EGT model (the baseline is λ = 0).")
    if args.calibration_users < 2:
        raise ValueError(f"--calibration-users must be >= 2, got {args.calibration_users}.")
    final = _check_output(os.path.abspath(args.output))
    stage = _staging_folder(final)
    try:
        code = _run_into(args, settings, architecture, stage, final)
        atomic.publish_folder(stage, final, last="summary.json")
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    print(f"Wrote {final}/ (report.md, plots, models"
          f"{'' if args.no_export else ', deploy/'}).")
    return code


# Written into summary.json: a folder holding it is an earlier demo output, which a
# rerun may replace whole.
DEMO_PRODUCER = "keras-egt demo"


def _is_demo_output(folder):
    """Whether `folder` is empty or holds the summary.json of a demo."""
    if not os.listdir(folder):
        return True
    try:
        with open(os.path.join(folder, "summary.json"), encoding="utf-8") as f:
            summary = json.load(f)
    except (OSError, ValueError):
        return False
    # Demos before DEMO_PRODUCER wrote "preset" and "cascades".
    return isinstance(summary, dict) and (summary.get("producer") == DEMO_PRODUCER or
                                          {"preset", "cascades"} <= set(summary))


def _check_output(out):
    """`out` if the demo may write it (new, empty, or an earlier demo's output), else a
    ValueError before any work."""
    here = os.path.realpath(os.getcwd())
    real = os.path.realpath(out)
    if here == real or here.startswith(real.rstrip(os.sep) + os.sep):
        raise ValueError(f"--output {out} is the current folder or holds it; the demo "
                         "replaces its output folder whole. Choose e.g. --output egt-demo.")
    if os.path.lexists(out):
        if not os.path.isdir(out):
            raise ValueError(f"--output {out} exists and is not a folder; choose another "
                             "--output.")
        if not _is_demo_output(out):
            raise ValueError(f"--output {out} is not empty and holds no summary.json of an "
                             "earlier demo; the demo only replaces its own output. Choose "
                             "another --output.")
    return out


def _staging_folder(out):
    """A fresh `.<name>.tmp-<pid>-*` folder next to `out`, the whole run's output."""
    parent, name = os.path.split(out)
    os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(prefix=f".{atomic.staging_tag(name)}.tmp-{os.getpid()}-",
                            dir=parent)


class _Steps:
    """Numbers the demo's phases: each one prints a "step k/n: ..." line as it starts.

    Args:
        total: how many phases this run has.

    Example:
    >>> step = _Steps(2)
    >>> step("Loading the data.")
    step 1/2: Loading the data.
    """

    def __init__(self, total):
        self.total, self.done = total, 0

    def __call__(self, text):
        self.done += 1
        print(f"step {self.done}/{self.total}: {text}", flush=True)


# Phases without the export, and the export's own (see _run_into and _deploy).
STEPS, EXPORT_STEPS = 8, 5
# Samples per call of the TFLM cascade between two updates of its progress bar.
PROGRESS_CHUNK = 16


def _run_into(args, settings, architecture, out, final):
    """The demo's phases, writing into the staging folder `out` (published as `final`)."""
    import keras
    import numpy as np

    import keras_egt as egt
    from keras_egt.datasets import radar_gestures

    started = time.time()
    step = _Steps(STEPS + (0 if args.no_export else EXPORT_STEPS))

    step(f"Loading the simulated radar gesture set ({args.num_train} train / {args.num_test} "
         "test; simulated on the first run, about 45 s on 2 cores, then read from the cache).")
    (x_train, y_train), (x_test, y_test) = radar_gestures.load_data(
        num_train=args.num_train, num_test=args.num_test, verbose=1
    )
    # The validation split only monitors training; thresholds are calibrated on other users.
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(x_train))
    n_val = max(len(x_train) // 6, radar_gestures.NUM_CLASSES)
    x_val, y_val = x_train[order[:n_val]], y_train[order[:n_val]]
    x_fit, y_fit = x_train[order[n_val:]], y_train[order[n_val:]]

    models, histories = {}, {}
    for name, lam in [("Baseline", 0.0), (f"EGT (λ = {args.consistency_weight:g})", args.consistency_weight)]:
        keras.utils.set_random_seed(args.seed)
        model = build_model(architecture, radar_gestures.NUM_CLASSES, x_train.shape[1:], lam)
        settings["architecture"] = describe_model(model)
        step(f"Training {name}: {settings['architecture']}, {settings['epochs']} epochs.")
        history = egt.recipe.fit(
            model, x_fit, y_fit, validation_data=(x_val, y_val), epochs=settings["epochs"],
            batch_size=args.batch_size, decay_every=settings["step_every"], verbose=1,
        )
        model.save(os.path.join(out, "baseline.keras" if lam == 0 else "egt.keras"))
        models[name], histories[name] = model, history.history
    baseline_name, egt_name = list(models)
    egt_model = models[egt_name]

    reports = {}
    for name, model in models.items():
        step(f"Evaluating {name} on the {len(x_test)} test samples (accuracy, consistency, "
             f"cascade at threshold {args.threshold:g}), then batch-1 timing.")
        reports[name] = egt.evaluate(model, x_test, y_test, threshold=args.threshold, verbose=1)

    step(f"Calibrating the thresholds on {args.calibration_users} fresh users (simulated on "
         "the first run, then read from the cache).")
    x_cal, y_cal, users_cal = radar_gestures.load_calibration_data(
        num_users=args.calibration_users, samples_per_user=CALIBRATION["samples_per_user"],
        verbose=1)
    thresholds = _calibrate(egt_model, x_cal, y_cal, users_cal)
    step("Evaluating EGT with the calibrated thresholds on the test samples, then batch-1 "
         "timing.")
    calibrated = egt.evaluate(egt_model, x_test, y_test, threshold=thresholds, verbose=1)
    # The float cascade's decisions, which the int8 one is compared with.
    float_cascade = None if args.no_export else egt.Cascade(egt_model, threshold=thresholds).predict(x_test)
    calibration_text = _calibration_text(thresholds, calibrated)
    print(calibration_text)
    for name, report in reports.items():
        report.to_json(os.path.join(out, ("baseline" if name == baseline_name else "egt") + "_report.json"))
    calibrated.to_json(os.path.join(out, "egt_calibrated_report.json"))

    step("Plotting attention maps, consistency, exit shares and the speedup curve.")
    grid = {"y": y_test[:8], "class_names": radar_gestures.CLASS_NAMES}
    plots = {
        "attention_egt": egt.plots.attention_grid(egt_model, x_test[:8], os.path.join(out, "attention_egt.png"), **grid),
        "attention_baseline": egt.plots.attention_grid(models[baseline_name], x_test[:8], os.path.join(out, "attention_baseline.png"), **grid),
        "consistency": egt.plots.consistency_bars(reports, os.path.join(out, "consistency.png")),
        "exits": egt.plots.exit_histogram(reports[egt_name], os.path.join(out, "exits.png")),
        "speedup": egt.plots.speedup_curve(reports[egt_name].curve, os.path.join(out, "speedup.png")),
    }

    deploy_text = "Skipped (--no-export)."
    if args.no_export:  # summary.json marks a demo output even without the export
        atomic.write_text(os.path.join(out, "summary.json"), json.dumps(
            {"producer": DEMO_PRODUCER, "preset": settings["preset"],
             "architecture": settings["architecture"],
             "calibration": _promise(thresholds)}, indent=2) + "\n")
    else:
        deploy_text = _deploy(step, settings, egt_model, x_fit[:256], x_test, y_test, out,
                              {f"threshold_{args.threshold:g}": (reports[egt_name], args.threshold),
                               "calibrated": (calibrated, thresholds)}, float_cascade)
        # The runner names the folder it loaded: the staging one, gone once published.
        deploy_text = deploy_text.replace(out, final)

    minutes = (time.time() - started) / 60
    report_path = os.path.join(final, "report.md")
    text = _report_markdown(
        settings, args, reports, calibrated, calibration_text, plots, deploy_text, minutes, len(x_fit), len(x_val), len(x_test)
    )
    atomic.write_text(os.path.join(out, "report.md"), text)
    print(text)
    print(f"\nDone in {minutes:.1f} min. Report: {report_path}")
    print("Plots: " + ", ".join(os.path.relpath(os.path.join(final, os.path.basename(p)))
                                for p in plots.values()))
    return 0


def _calibrate(model, x, y, users):
    """Thresholds certified on the held-out users `users` (`calibrate_thresholds`).

    A final exit at chance is not a failure of the demo: the calibrator returns
    thresholds that never exit early, not certified, with its `reason`.

    Args:
        model: the trained EGT model.
        x: the calibration inputs.
        y: their labels.
        users: their user ids (the bound runs over users).

    Returns:
        A `CalibratedThresholds`.

    Example:
    >>> thresholds = _calibrate(model, x_cal, y_cal, users_cal)
    """
    from keras_egt import calibration

    with warnings.catch_warnings():
        # The report states the outcome; the calibrator's warning would say it twice.
        warnings.simplefilter("ignore", UserWarning)
        return calibration.calibrate_thresholds(
            model, x, y, CALIBRATION["max_accuracy_drop"],
            confidence=CALIBRATION["confidence"], groups=users)


# What `calibrate_thresholds` records of its promise, under its own names.
PROMISE_FIELDS = ("certified", "risk", "epsilon", "confidence", "delta", "bound", "n",
                  "num_samples", "groups", "samples_needed", "reason", "criterion")


def _promise(thresholds):
    """The calibration promise for summary.json: its fields and the report's sentence.

    Args:
        thresholds: what `_calibrate` returned.

    Returns:
        A dict of `PROMISE_FIELDS` (`reason` says why nothing is certified, else
        None), plus `statement` (`describe()`).

    Example:
    >>> _promise(thresholds)["epsilon"]
    0.01
    """
    record = thresholds.to_dict()
    promise = {name: record[name] for name in PROMISE_FIELDS}
    promise["statement"] = thresholds.describe()
    return promise


def _tflm_labels(deploy, x, threshold=None):
    """The TFLM cascade's `predict(x)` under a progress bar over the samples.

    Args:
        deploy: the deploy folder.
        x: float inputs.
        threshold: None for the exported thresholds, else probability threshold(s)
            (as `Cascade`), turned into each segment's int8 test.

    Returns:
        `(labels, exits)` as `CascadeRunner.predict`.

    Example:
    >>> labels, exits = _tflm_labels("deploy/", x_test, 0.9)
    """
    import keras
    import numpy as np

    from keras_egt import metrics
    from keras_egt.export import load_cascade

    runner = load_cascade(deploy, runtime="tflm", threshold=threshold)
    progress = keras.utils.Progbar(len(x), unit_name="sample")
    labels, exits = [], []
    for part in metrics.batches(len(x), PROGRESS_CHUNK):
        batch_labels, batch_exits = runner.predict(x[part])
        labels.append(batch_labels)
        exits.append(batch_exits)
        progress.update(part.stop)
    return np.concatenate(labels), np.concatenate(exits)


def _final_only_labels(final_only, x):
    """Labels of the int8 model without early exit on TFLM, one sample at a time.

    Args:
        final_only: the dict `export_final_only` returned.
        x: float inputs.

    Returns:
        An int64 array `(n,)`; a progress bar runs over the samples meanwhile.

    Example:
    >>> labels = _final_only_labels(export_final_only(model, x_train[:256], path), x_test)
    """
    import keras
    import numpy as np

    from keras_egt.export import _deps
    from keras_egt.export import runtime as rt

    tflm = _deps.require("tflite_micro.python.tflite_micro.runtime", "the TFLM runtime")
    with open(final_only["path"], "rb") as f:
        interpreter = tflm.Interpreter.from_bytes(f.read(), arena_size=final_only["arena_bytes"])
    progress = keras.utils.Progbar(len(x), unit_name="sample")
    labels = np.zeros(len(x), np.int64)
    for i in range(len(x)):
        interpreter.set_input(rt.quantize(x[i : i + 1], final_only["scale"],
                                          final_only["zero_point"]), 0)
        interpreter.invoke()
        labels[i] = int(np.argmax(interpreter.get_output(0)[0]))
        progress.update(i + 1)
    return labels


def _deploy(step, settings, model, calibration, x_test, y_test, out, cascades, float_cascade):
    """The export's phases: int8 segments, the model without early exit, TFLM runs.

    Writes `deploy/` (with the last cascade's thresholds), `final_only.tflite` and
    `summary.json` into `out`.

    Args:
        step: the run's `_Steps`.
        settings: the demo's settings.
        model: the trained EGT model.
        calibration: representative data of the int8 quantization.
        x_test: the test inputs.
        y_test: their labels.
        out: the staging folder.
        cascades: `{name: (report, threshold)}`; the last one's thresholds are exported.
        float_cascade: `(labels, exits)` of the float cascade with the exported
            thresholds on `x_test`, which the int8 one's are compared with.

    Returns:
        The report's deployment section (markdown).

    Example:
    >>> text = _deploy(_Steps(5), settings, model, x_fit[:256], x_test, y_test, out, cascades,
    ...                Cascade(model, cascades["calibrated"][1]).predict(x_test))
    """
    import numpy as np

    import keras_egt as egt
    from keras_egt.datasets import radar_gestures

    name = list(cascades)[-1]
    deploy = os.path.join(out, "deploy")
    step(f"Exporting the EGT model as {model.num_exits} int8 TFLite segments (one per exit).")
    egt.export.export_cascade(model, deploy, representative_data=calibration,
                              threshold=cascades[name][1],
                              class_names=radar_gestures.CLASS_NAMES, verbose=True)
    summary, table = _deployment_summary(settings, model, deploy, calibration, x_test, y_test,
                                         out, cascades, step=step,
                                         float_cascades={name: float_cascade})
    entry = summary["cascades"][name]
    text = (
        f"int8 TFLM cascade on the test set: accuracy {100 * entry['tflm_accuracy']:.2f}% "
        f"(int8 without early exit {100 * entry['tflm_final_exit_accuracy']:.2f}%; float Keras "
        f"cascade {100 * np.mean(float_cascade[0] == y_test):.2f}%); agreement with the float "
        f"cascade: labels {100 * entry['float_label_agreement']:.2f}%, exits "
        f"{100 * entry['float_exit_agreement']:.2f}%.\n\n"
    )
    return text + egt.export.load_cascade(deploy, runtime="tflm").report() + "\n\n" + table


def _deployment_summary(settings, model, deploy, calibration, x_test, y_test, out, cascades,
                        step=None, float_cascades=None):
    """Table II on the int8 TFLM interpreter and `OUTPUT/summary.json`, per cascade.

    Every speedup is against the same model without early exit: the float final exit
    alone (MACs, float batch-1 time) and the unsplit int8 final-only model exported
    through the same converter path (TFLM batch-1 time, int8 accuracy without early
    exit). Calibrated cascades record their promise (`_promise`).

    Args:
        settings: `preset` and `architecture` for summary.json.
        model: the trained model exported in `deploy`.
        deploy: its deploy folder.
        calibration: representative data of the int8 quantization.
        x_test: the test inputs.
        y_test: their labels.
        out: the folder for `final_only.tflite` and `summary.json`.
        cascades: `{name: (report, threshold)}`, each run on the deployed segments.
        step: the run's `_Steps`, announcing each phase; None prints no step lines.
        float_cascades: optional `{name: (labels, exits)}` of float cascades, whose
            agreement with the int8 one goes into that cascade's entry.

    Returns:
        `(summary, markdown)`: the dict written to summary.json, and Table II with the
        verdicts.

    Example:
    >>> summary, text = _deployment_summary(settings, model, "deploy/", x_train[:256],
    ...                                     x_test, y_test, "work/", cascades)
    """
    import numpy as np

    import keras_egt as egt

    step = step or (lambda text: None)
    float_cascades = float_cascades or {}
    manifest = egt.export.read_manifest(deploy)
    step("Exporting the int8 model without early exit (one unsplit flatbuffer), the "
         "reference of every int8 speedup and accuracy.")
    final_only = egt.export.export_final_only(model, calibration,
                                              os.path.join(out, "final_only.tflite"))
    step(f"Running the int8 model without early exit on TFLM over the {len(x_test)} test "
         "samples.")
    final_accuracy = float(np.mean(_final_only_labels(final_only, x_test) == y_test))
    summary = {"producer": DEMO_PRODUCER, "preset": settings["preset"], "architecture": settings["architecture"],
               "flash_bytes": sum(seg["flash_bytes"] for seg in manifest["segments"]),
               "arena_bytes": max(seg["arena_bytes"] for seg in manifest["segments"]),
               "final_only_flash_bytes": final_only["flash_bytes"],
               "final_only_arena_bytes": final_only["arena_bytes"], "cascades": {}}
    lines = ["### Table II on the int8 TFLM interpreter (batch 1)", "",
             "| Cascade | With Early Exit (ms) | Without Early Exit (ms) | TFLM speedup "
             "| Float speedup | MAC speedup | TFLM acc. with EE (%) | TFLM acc. without EE (%) |",
             "|---|---|---|---|---|---|---|---|"]
    verdicts = []
    for name, (report, threshold) in cascades.items():
        step(f"Running the {name} int8 cascade on TFLM over the {len(x_test)} test samples, "
             f"then timing {report.timing['samples']} of them at batch 1 with and without "
             "early exit.")
        labels, exits = _tflm_labels(deploy, x_test, threshold)
        timing = egt.export.tflm_time_per_sample(deploy, final_only, x_test,
                                                 samples=report.timing["samples"],
                                                 threshold=threshold, verbose=1)
        entry = {
            "thresholds": [float(t) for t in report.thresholds],
            "mac_speedup": float(report.mac_speedup),
            "float_time_speedup": float(report.timing["speedup"]),
            "tflm_time_speedup": float(timing["speedup"]),
            "accuracy": float(report.accuracy),
            "final_exit_accuracy": float(report.final_accuracy),
            "tflm_accuracy": float(np.mean(labels == y_test)),
            "tflm_final_exit_accuracy": final_accuracy,
            "float_ms": [report.timing["ms_with_early_exit"], report.timing["ms_without_early_exit"]],
            "tflm_ms": [timing["ms_with_early_exit"], timing["ms_without_early_exit"]],
            "calibration": _promise(threshold) if hasattr(threshold, "certified") else None,
        }
        if name in float_cascades:
            float_labels, float_exits = float_cascades[name]
            entry["float_label_agreement"] = float(np.mean(labels == float_labels))
            entry["float_exit_agreement"] = float(np.mean(exits == float_exits))
        summary["cascades"][name] = entry
        lines.append(f"| {name} | {timing['ms_with_early_exit']:.2f} | "
                     f"{timing['ms_without_early_exit']:.2f} | {entry['tflm_time_speedup']:.2f}x | "
                     f"{entry['float_time_speedup']:.2f}x | {entry['mac_speedup']:.2f}x | "
                     f"{100 * entry['tflm_accuracy']:.2f} | {100 * final_accuracy:.2f} |")
        slower = [f"{form} ({entry[key]:.2f}x)" for form, key in (
            ("MACs", "mac_speedup"), ("float batch-1 time", "float_time_speedup"),
            ("TFLM batch-1 time", "tflm_time_speedup")) if entry[key] <= 1.0]
        if slower:
            verdicts.append(f"**Early exit does not pay off** for the {name} cascade in: "
                            f"{', '.join(slower)}; there it costs at least as much as the model "
                            "without early exit.")
        else:
            verdicts.append(f"Early exit pays off for the {name} cascade: "
                            f"{entry['mac_speedup']:.2f}x fewer MACs, {entry['float_time_speedup']:.2f}x "
                            f"float and {entry['tflm_time_speedup']:.2f}x TFLM batch-1 time, accuracy "
                            f"{100 * (entry['accuracy'] - entry['final_exit_accuracy']):+.2f} points "
                            "vs its own final exit.")
    atomic.write_text(os.path.join(out, "summary.json"), json.dumps(summary, indent=2) + "\n")
    lines += ["", f"Flash {summary['flash_bytes']:,} bytes (all segments), largest TFLM arena "
              f"{summary['arena_bytes']:,} bytes; without early exit {final_only['flash_bytes']:,} "
              f"and {final_only['arena_bytes']:,} bytes.", ""] + verdicts
    return summary, "\n".join(lines)


def _calibration_text(thresholds, calibrated):
    """The certified promise beside the drop measured on the test users."""
    drop = 100 * (calibrated.final_accuracy - calibrated.accuracy)
    return (
        f"Per-exit thresholds {json.dumps([round(float(t), 4) for t in thresholds])}, calibrated on "
        f"{thresholds.num_samples} samples of {thresholds.groups} held-out users (in neither the "
        f"training nor the test set): {thresholds.describe()} Measured on the test users: "
        f"{drop:.2f}-point drop ({100 * calibrated.accuracy:.2f}% vs "
        f"{100 * calibrated.final_accuracy:.2f}% without early exit), "
        f"{calibrated.mac_speedup:.2f}x MAC speedup."
    )


def _report_markdown(settings, args, reports, calibrated, calibration_text, plots, deploy_text, minutes, n_fit, n_val, n_test):
    """The text of report.md: settings, Tables I and II, calibration, deployment, plots."""
    import keras

    import keras_egt as egt

    lines = [
        "# keras-egt demo report",
        "",
        f"Built-in simulated 60 GHz radar gestures: {n_fit} training, {n_val} validation, "
        f"{n_test} test samples from unseen users. Model {settings['preset']} ({settings['architecture']}), "
        f"{settings['epochs']} epochs, Adam 1e-3 halved every {settings['step_every']} epochs, batch "
        f"{args.batch_size}, Keras {keras.__version__} on {keras.backend.backend()}. "
        + ("The paper's settings (--full)." if args.full else
           "Quick settings chosen to finish in under 15 minutes on a 2-core CPU; run `keras-egt demo --full` for the paper's."),
        f" Total time {minutes:.1f} min.",
        "",
        "## Table I and Table II (threshold "
        f"{args.threshold:g}, as the paper)",
        "",
        egt.evaluation.compare_markdown(reports),
        "",
        "## EGT with calibrated thresholds",
        "",
        calibration_text,
        "",
        calibrated.to_markdown(),
        "",
        "## Deployment",
        "",
        deploy_text,
        "",
        "## Plots",
        "",
    ]
    lines += [f"![{name}]({os.path.basename(path)})" for name, path in plots.items()]
    return "\n".join(lines) + "\n"
