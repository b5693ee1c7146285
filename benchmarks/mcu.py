"""Issue 12: does early exit pay off on the MCU preset, where it runs? (50 epochs, λ = 0.3)

Trains `EarlyExitMCU` (the demo's default) with the paper's recipe on the built-in
radar set, or loads it with --model, then, at threshold 0.9 and at the demo's
calibrated thresholds (1 point, confidence 0.9, on fresh users), against the same
model run to its final exit only:

* MACs, and float batch-1 wall clock with `CompiledCascade` on TensorFlow and (in a
  JAX subprocess on the saved model) JAX;
* the int8 cascade on TFLM's interpreter vs the unsplit int8 final-only model from
  the same converter path (`keras-egt demo`'s Table II, `cli.demo._deployment_summary`);
* the split overhead (`split_overhead.measure`), flash and arena measured vs the
  before-training estimate (`keras_egt.budget`), the oracle bound.

    KERAS_BACKEND=tensorflow nice python benchmarks/mcu.py               # ~15 min, 2 cores
    python benchmarks/mcu.py --model benchmarks/models/mcu.keras       # reuse a model

Writes benchmarks/results/mcu.json.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import _common

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "mcu.json")
MODELS = os.path.join(HERE, "models")
TARGETS = {"mac_speedup": 2.5, "tflm_time_speedup": 2.2, "max_drop": 0.005,
           "final_exit_accuracy": 0.974, "flash_bytes": 256 * 1024, "arena_bytes": 64 * 1024,
           "float_vs_mac": 0.8}


def float_timing(model_path, thresholds, samples):
    """Float batch-1 speedups of the saved model on this process's backend."""
    import keras

    import keras_egt as egt
    from keras_egt.datasets import radar_gestures

    egt.register_serializables()
    model = keras.saving.load_model(model_path)
    _, (x_test, y_test) = radar_gestures.load_data()
    out = {}
    for name, threshold in thresholds.items():
        report = egt.evaluate(model, x_test, y_test, threshold=threshold,
                              timing_samples=samples)
        out[name] = {"float_time_speedup": float(report.timing["speedup"]),
                     "mac_speedup": float(report.mac_speedup),
                     "ms": [report.timing["ms_with_early_exit"],
                            report.timing["ms_without_early_exit"]]}
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", default="mcu")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--lam", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default=None, help="a trained .keras model (skips training)")
    parser.add_argument("--timing-samples", type=int, default=300)
    parser.add_argument("--calibration-users", type=int, default=500)
    parser.add_argument("--output", default=RESULTS)
    parser.add_argument("--float-timing", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.float_timing:  # the JAX subprocess
        job = json.loads(args.float_timing)
        print("RESULT " + json.dumps(float_timing(job["model"], job["thresholds"],
                                                  job["samples"])))
        return 0

    import keras

    import keras_egt as egt
    from keras_egt import budget, costs
    from keras_egt.cli import demo
    from keras_egt.cli.train import describe_model
    from keras_egt.datasets import radar_gestures

    sys.path.insert(0, HERE)
    import split_overhead

    (x_train, y_train), (x_test, y_test) = radar_gestures.load_data()
    train_s = None
    if args.model:
        egt.register_serializables()
        model = keras.saving.load_model(args.model)
        model_path = args.model
    else:
        keras.utils.set_random_seed(args.seed)
        model = egt.EarlyExitMCU(radar_gestures.NUM_CLASSES, x_train.shape[1:],
                                 stages=args.stages, consistency_weight=args.lam)
        start = time.time()
        egt.recipe.fit(model, x_train, y_train, epochs=args.epochs, verbose=2)
        train_s = time.time() - start
        # Named after the results file, so that a quick run keeps the real model.
        model_path = os.path.join(MODELS, os.path.splitext(os.path.basename(args.output))[0]
                                  + ".keras")
        os.makedirs(MODELS, exist_ok=True)
        model.save(model_path)

    x_cal, y_cal, users_cal = radar_gestures.load_calibration_data(
        num_users=args.calibration_users,
        samples_per_user=demo.CALIBRATION["samples_per_user"])
    thresholds = egt.calibrate_thresholds(
        model, x_cal, y_cal, demo.CALIBRATION["max_accuracy_drop"],
        confidence=demo.CALIBRATION["confidence"], groups=users_cal)
    reports = {"threshold_0.9": (egt.evaluate(model, x_test, y_test, threshold=0.9,
                                              timing_samples=args.timing_samples), 0.9),
               "calibrated": (egt.evaluate(model, x_test, y_test, threshold=thresholds,
                                           timing_samples=args.timing_samples), thresholds)}
    estimate = budget.estimate_deployment(model)
    with tempfile.TemporaryDirectory(prefix="egt_mcu_") as work:
        deploy = os.path.join(work, "deploy")
        egt.export.export_cascade(model, deploy, x_train[:256], threshold=0.9)
        settings = {"preset": args.stages, "architecture": describe_model(model)}
        summary, text = demo._deployment_summary(settings, model, deploy, x_train[:256],
                                                 x_test, y_test, work, reports)
        split = split_overhead.measure(model, x_train[:128], x_test[:200],
                                       os.path.join(work, "split"))

    job = {"model": os.path.abspath(model_path), "samples": args.timing_samples,
           "thresholds": {"threshold_0.9": 0.9,
                          "calibrated": [float(t) for t in thresholds]}}
    env = dict(os.environ, KERAS_BACKEND="jax")
    p = subprocess.run([sys.executable, os.path.abspath(__file__), "--float-timing",
                        json.dumps(job)], capture_output=True, text=True, env=env, timeout=3600)
    lines = [l for l in p.stdout.splitlines() if l.startswith("RESULT ")]
    jax_timing = json.loads(lines[-1][len("RESULT "):]) if lines else {
        "error": p.stderr[-2000:]}

    cascades = {}
    for name, (report, _) in reports.items():
        entry = dict(summary["cascades"][name])
        entry.update(
            float_time_speedup_tensorflow=entry.pop("float_time_speedup"),
            float_time_speedup_jax=jax_timing.get(name, {}).get("float_time_speedup"),
            oracle_speedup=float(report.oracle["speedup"]),
            oracle_accuracy=float(report.oracle["accuracy"]),
            exit_shares=[float(s) for s in report.exit_shares],
            exit_accuracy=[float(a) for a in report.exit_accuracy],
            drop=float(report.final_accuracy - report.accuracy),
        )
        cascades[name] = entry
    result = {
        "machine": _common.machine(keras=keras.__version__),
        "settings": {"stages": [list(s) for s in model.stages_spec]
                     if hasattr(model, "stages_spec") else None, "epochs": args.epochs,
                     "lambda": args.lam, "seed": args.seed, "model": model_path,
                     "train_s": train_s, "timing_samples": args.timing_samples,
                     "calibration": demo.CALIBRATION,
                     "calibration_users": args.calibration_users},
        "exit_macs": [int(v) for v in costs.exit_macs(model)],
        "final_only_macs": int(costs.final_only_macs(model)),
        "flash_bytes": summary["flash_bytes"], "arena_bytes": summary["arena_bytes"],
        "final_only_flash_bytes": summary["final_only_flash_bytes"],
        "final_only_arena_bytes": summary["final_only_arena_bytes"],
        "estimate": estimate,
        "split_overhead": split,
        "cascades": cascades,
        "jax": jax_timing,
        "targets": TARGETS,
        "tflm_table": text,
    }
    _common.write_json(args.output, result)
    print(text)
    print(json.dumps({k: {m: v for m, v in c.items() if not isinstance(v, list)}
                      for k, c in cascades.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
