"""`keras-egt demo`: the main job end to end on the built-in radar data."""

import json
import os
import time

from keras_egt import atomic
from keras_egt.cli.train import parse_widths

# Finishes in well under 15 minutes on a 2-core CPU (see the report's header).
QUICK = {"widths": "micro", "epochs": 20, "step_every": 8}
# The paper's settings.
FULL = {"widths": "paper", "epochs": 50, "step_every": 15}


def register(subparsers):
    parser = subparsers.add_parser(
        "demo",
        help="train a baseline and an EGT model on the built-in radar data, evaluate, "
        "explain, export the int8 cascade and run it on TFLM",
        description="The whole keras-egt workflow on the built-in simulated 60 GHz radar "
        "gesture set: trains a baseline (λ = 0) and an EGT model, compares their "
        "attention consistency and early-exit speedup (the paper's Tables I and II), "
        "plots the attention maps, exports the EGT model as five int8 TFLite "
        "segments, runs them on the TensorFlow Lite Micro interpreter, and writes "
        "OUTPUT/report.md with every figure.",
    )
    parser.add_argument("--output", default="egt-demo", help="folder for the report, plots, models and the deploy/ cascade (default: egt-demo)")
    parser.add_argument("--full", action="store_true", help="the paper's settings: paper widths (64-512), 50 epochs, learning rate halved every 15 epochs; slow on a CPU")
    parser.add_argument("--lambda", dest="consistency_weight", type=float, default=0.3, help="λ of the EGT model (default 0.3, the paper's best)")
    parser.add_argument("--epochs", type=int, help="override the number of epochs (default 20, or 50 with --full)")
    parser.add_argument("--widths", help='override the widths: "paper", "micro" or 5 comma-separated ints (default micro, or paper with --full)')
    parser.add_argument("--threshold", type=float, default=0.9, help="confidence threshold of the cascade (default 0.9, the paper's)")
    parser.add_argument("--num-train", type=int, default=1363, help="simulated training samples (default 1363, as the paper)")
    parser.add_argument("--num-test", type=int, default=1364, help="simulated test samples (default 1364, as the paper)")
    parser.add_argument("--batch-size", type=int, default=32, help="training batch size (default 32)")
    parser.add_argument("--no-export", action="store_true", help="skip the int8 export and the TFLM run (they need TensorFlow)")
    parser.add_argument("--seed", type=int, default=0, help="random seed for data split and initialisation")
    parser.set_defaults(func=run)


def run(args):
    import keras
    import numpy as np

    import keras_egt as egt
    from keras_egt.datasets import radar_gestures

    settings = dict(FULL if args.full else QUICK)
    if args.epochs is not None:
        if args.epochs < 1:
            raise ValueError(f"--epochs must be >= 1, got {args.epochs}.")
        settings["epochs"] = args.epochs
    if args.widths:
        settings["widths"] = parse_widths(args.widths)
    if args.consistency_weight <= 0:
        raise ValueError("--lambda must be > 0 for the EGT model (the baseline is λ = 0).")
    out = os.path.abspath(args.output)
    os.makedirs(out, exist_ok=True)
    started = time.time()

    print(f"[1/6] Loading the simulated radar gesture set ({args.num_train} train / {args.num_test} test).")
    (x_train, y_train), (x_test, y_test) = radar_gestures.load_data(
        num_train=args.num_train, num_test=args.num_test
    )
    # Thresholds are calibrated on held-out training data, never on the test set.
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(x_train))
    n_val = max(len(x_train) // 6, radar_gestures.NUM_CLASSES)
    x_val, y_val = x_train[order[:n_val]], y_train[order[:n_val]]
    x_fit, y_fit = x_train[order[n_val:]], y_train[order[n_val:]]

    models, histories = {}, {}
    for step, (name, lam) in enumerate([("Baseline", 0.0), (f"EGT (λ = {args.consistency_weight:g})", args.consistency_weight)]):
        print(f"[{2 + step}/6] Training {name}: widths {settings['widths']}, {settings['epochs']} epochs.")
        keras.utils.set_random_seed(args.seed)
        model = egt.EarlyExitCNN(
            num_classes=radar_gestures.NUM_CLASSES, input_shape=x_train.shape[1:],
            widths=settings["widths"], consistency_weight=lam,
        )
        model.compile(optimizer=keras.optimizers.Adam(1e-3), metrics=["accuracy"])
        history = model.fit(
            x_fit, y_fit, validation_data=(x_val, y_val), epochs=settings["epochs"],
            batch_size=args.batch_size, verbose=1,
            callbacks=[egt.callbacks.StepDecay(every=settings["step_every"], factor=0.5)],
        )
        model.save(os.path.join(out, "baseline.keras" if lam == 0 else "egt.keras"))
        models[name], histories[name] = model, history.history
    baseline_name, egt_name = list(models)

    print("[4/6] Evaluating both models (accuracy, consistency, cascade, batch-1 timing).")
    reports = {
        name: egt.evaluate(model, x_test, y_test, threshold=args.threshold)
        for name, model in models.items()
    }
    egt_model = models[egt_name]
    thresholds = egt.calibrate_thresholds(egt_model, x_val, y_val, max_accuracy_drop=0.005)
    calibrated = egt.evaluate(egt_model, x_test, y_test, threshold=thresholds)
    for name, report in reports.items():
        report.to_json(os.path.join(out, ("baseline" if name == baseline_name else "egt") + "_report.json"))
    calibrated.to_json(os.path.join(out, "egt_calibrated_report.json"))

    print("[5/6] Plotting attention maps, consistency, exit shares and the speedup curve.")
    plots = {
        "attention_egt": egt.plots.attention_grid(egt_model, x_test[:8], os.path.join(out, "attention_egt.png")),
        "attention_baseline": egt.plots.attention_grid(models[baseline_name], x_test[:8], os.path.join(out, "attention_baseline.png")),
        "consistency": egt.plots.consistency_bars(reports, os.path.join(out, "consistency.png")),
        "exits": egt.plots.exit_histogram(reports[egt_name], os.path.join(out, "exits.png")),
        "speedup": egt.plots.speedup_curve(reports[egt_name].curve, os.path.join(out, "speedup.png")),
    }

    deploy_text = "Skipped (--no-export)."
    if not args.no_export:
        print("[6/6] Exporting the EGT model as five int8 TFLite segments and running them on TFLM.")
        deploy = os.path.join(out, "deploy")
        egt.export.export_cascade(egt_model, deploy, representative_data=x_fit[:256], threshold=thresholds)
        runner = egt.export.load_cascade(deploy, runtime="tflm")
        labels, exits = runner.predict(x_test)
        float_labels, float_exits = egt.Cascade(egt_model, threshold=thresholds).predict(x_test)
        deploy_text = (
            f"int8 TFLM cascade on the test set: accuracy {100 * np.mean(labels == y_test):.2f}% "
            f"(float Keras cascade {100 * np.mean(float_labels == y_test):.2f}%); "
            f"agreement with the float cascade: labels {100 * np.mean(labels == float_labels):.2f}%, "
            f"exits {100 * np.mean(exits == float_exits):.2f}%.\n\n" + runner.report()
        )

    minutes = (time.time() - started) / 60
    report_path = os.path.join(out, "report.md")
    text = _report_markdown(
        settings, args, reports, calibrated, thresholds, plots, deploy_text, minutes, len(x_fit), len(x_val), len(x_test)
    )
    atomic.write_text(report_path, text)
    print(text)
    print(f"\nDone in {minutes:.1f} min. Report: {report_path}")
    print("Plots: " + ", ".join(os.path.relpath(p) for p in plots.values()))
    return 0


def _report_markdown(settings, args, reports, calibrated, thresholds, plots, deploy_text, minutes, n_fit, n_val, n_test):
    import keras

    import keras_egt as egt

    lines = [
        "# keras-egt demo report",
        "",
        f"Built-in simulated 60 GHz radar gestures: {n_fit} training, {n_val} validation (threshold "
        f"calibration), {n_test} test samples from unseen users. Widths {settings['widths']}, "
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
        f"Per-exit thresholds calibrated on the validation split for at most 0.5 point accuracy drop: "
        f"{json.dumps([round(float(t), 4) for t in thresholds])}.",
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
