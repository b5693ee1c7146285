"""The confident-exit cascade of a trained EGT model (λ = 0.3) on the radar set.

Trains (or loads) an EGT early-exit model on the built-in radar gestures (1,363 train
samples), then on the 1,364 test samples compares, against the model without early
exit (exit 5 alone):

* the paper's rule, one threshold 0.9 on the max probability, and
* thresholds calibrated with `calibrate_thresholds(max_accuracy_drop=0.005)` on a
  separate validation set: 1,364 samples simulated from 8 *other* users (data seed
  1), in neither the training nor the test set; calibrating on the test set would
  flatter the result.

For each: the MAC speedup (analytic cost model, `keras_egt.costs`), the batch-1
wall-clock speedup (`keras_egt.evaluation.time_per_sample`: per-sample loop, compiled
segments, this host's CPU), the accuracy drop in points, and the cascade's MAC cost
relative to the oracle bound (every sample at its earliest correct exit). Targets:
>= 2.5x MAC speedup at <= 0.5 point drop, within 1.3x of the oracle; the paper
reports 1.97x (wall clock) at 97.8% vs 99.56%.

    python benchmarks/cascade.py                              # paper widths, 50 epochs
    python benchmarks/cascade.py --widths micro --epochs 50   # a CPU-sized run
    python benchmarks/cascade.py --model egt.keras            # reuse a trained model
    python benchmarks/cascade.py --quick                      # smoke run, seconds

Writes benchmarks/results/cascade.json (`--quick`: cascade_quick.json) and prints a
markdown summary.
"""

import argparse
import json
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "cascade.json")
PAPER = {"wall_clock_speedup": 1.97, "accuracy_with_early_exit": 97.8,
         "accuracy_without_early_exit": 99.56, "threshold": 0.9}
TARGETS = {"mac_speedup": 2.5, "max_accuracy_drop_points": 0.5, "max_mac_ratio_to_oracle": 1.3}


def _widths(text):
    return text if text in ("paper", "micro") else tuple(int(w) for w in text.split(","))


def _summary(report, test_final_accuracy):
    timing = report.timing or {}
    return {
        "thresholds": report.thresholds,
        "accuracy_pct": 100 * report.accuracy,
        "accuracy_drop_points": 100 * (test_final_accuracy - report.accuracy),
        "mac_speedup": report.mac_speedup,
        "average_macs": report.average_macs,
        "wall_clock_speedup": timing.get("speedup"),
        "ms_with_early_exit": timing.get("ms_with_early_exit"),
        "ms_without_early_exit": timing.get("ms_without_early_exit"),
        "ms_with_early_exit_median": timing.get("ms_with_early_exit_median"),
        "ms_without_early_exit_median": timing.get("ms_without_early_exit_median"),
        "mac_ratio_to_oracle": report.mac_ratio_to_oracle,
        "exit_shares": report.exit_shares,
    }


def run(args):
    import keras

    import keras_egt as egt
    from keras_egt import costs
    from keras_egt.datasets import radar_gestures

    (x_train, y_train), (x_test, y_test) = radar_gestures.load_data(
        num_train=args.num_train, num_test=args.num_test, seed=0)
    # Validation: the test split of another draw (seed 1): 8 users seen nowhere else.
    _, (x_val, y_val) = radar_gestures.load_data(num_train=radar_gestures.NUM_CLASSES,
                                                 num_test=args.num_val, seed=1)
    train_seconds = None
    if args.model:
        model = keras.saving.load_model(args.model)
        print(f"Loaded {args.model}: widths {model.widths}, λ = {model.consistency_weight:g}")
    else:
        keras.utils.set_random_seed(args.seed)
        model = egt.EarlyExitCNN(radar_gestures.NUM_CLASSES, x_train.shape[1:],
                                 widths=_widths(args.widths), consistency_weight=args.lam)
        model.compile(keras.optimizers.Adam(1e-3), metrics=["accuracy"])
        start = time.time()
        model.fit(x_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
                  verbose=args.verbose, callbacks=[egt.callbacks.StepDecay(15, 0.5)])
        train_seconds = time.time() - start
        if args.save_model:
            from keras_egt.cli.train import save_model

            save_model(model, args.save_model)
            print(f"Saved {args.save_model}")

    # One pass over each set; every threshold search reuses these probabilities.
    p_val = egt.metrics.exit_probabilities(model, x_val)
    calibrated = egt.calibrate_thresholds(model, x_val, y_val, args.max_accuracy_drop,
                                          probabilities=p_val)
    calibrated_entropy = egt.calibrate_thresholds(model, x_val, y_val, args.max_accuracy_drop,
                                                  criterion="entropy", probabilities=p_val)
    paper = egt.evaluate(model, x_test, y_test, threshold=0.9, timing_samples=args.timing_samples,
                         name="EGT, paper threshold 0.9")
    tuned = egt.evaluate(model, x_test, y_test, threshold=list(calibrated),
                         timing_samples=args.timing_samples, name="EGT, calibrated")
    tuned_entropy = egt.evaluate(model, x_test, y_test, threshold=list(calibrated_entropy),
                                 criterion="entropy", timing=False,
                                 name="EGT, calibrated (entropy)")
    final = paper.final_accuracy
    results = {
        "paper_threshold_0.9": _summary(paper, final),
        "calibrated": _summary(tuned, final),
        "calibrated_entropy": _summary(tuned_entropy, final),
    }
    c = results["calibrated"]
    met = {
        "mac_speedup": c["mac_speedup"] >= TARGETS["mac_speedup"],
        "accuracy_drop": c["accuracy_drop_points"] <= TARGETS["max_accuracy_drop_points"],
        "oracle_ratio": c["mac_ratio_to_oracle"] <= TARGETS["max_mac_ratio_to_oracle"],
    }
    markdown = "\n\n".join([
        egt.evaluation.compare_markdown([paper, tuned, tuned_entropy]),
        "Per exit (test): accuracy (%) "
        + ", ".join(f"{100 * a:.2f}" for a in paper.exit_accuracy)
        + f"; oracle accuracy {100 * paper.oracle['accuracy']:.2f}%, "
        f"oracle MAC speedup {paper.oracle['speedup']:.2f}x.",
        f"Calibrated on validation ({len(y_val)} samples, other users): thresholds "
        + ", ".join(f"{t:.4f}" for t in calibrated[:4])
        + f"; validation accuracy {100 * calibrated.accuracy:.2f}% vs exit 5 "
        f"{100 * calibrated.final_accuracy:.2f}%, MAC speedup {calibrated.speedup:.2f}x.",
        f"Targets (calibrated, test): MAC speedup >= {TARGETS['mac_speedup']}x: "
        f"{c['mac_speedup']:.2f}x ({'met' if met['mac_speedup'] else 'NOT met'}); drop <= "
        f"{TARGETS['max_accuracy_drop_points']} points: {c['accuracy_drop_points']:.2f} "
        f"({'met' if met['accuracy_drop'] else 'NOT met'}); MACs / oracle <= "
        f"{TARGETS['max_mac_ratio_to_oracle']}: {c['mac_ratio_to_oracle']:.2f} "
        f"({'met' if met['oracle_ratio'] else 'NOT met'}).",
    ])
    result = {
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "backend": keras.backend.backend()},
        "settings": {
            "model": args.model, "widths": list(model.widths),
            "consistency_weight": model.consistency_weight,
            "epochs": None if args.model else args.epochs,
            "batch_size": None if args.model else args.batch_size,
            "optimizer": None if args.model else "Adam 1e-3, x0.5 every 15 epochs",
            "seed": args.seed, "num_train": len(x_train), "num_test": len(x_test),
            "num_val": len(x_val), "validation": "test split of radar_gestures seed 1 (other users)",
            "max_accuracy_drop": args.max_accuracy_drop,
            "timing_samples": args.timing_samples, "quick": args.quick,
        },
        "train_seconds": train_seconds,
        "final_only_macs": costs.final_only_macs(model),
        "exit_macs": costs.exit_macs(model),
        "test_exit_accuracy_pct": [100 * a for a in paper.exit_accuracy],
        "test_final_accuracy_pct": 100 * final,
        "oracle": paper.oracle,
        "results": results,
        "calibration": calibrated.to_dict(),
        "calibration_entropy": {k: v for k, v in calibrated_entropy.to_dict().items()
                                if k != "curve"},
        "targets": TARGETS,
        "targets_met": met,
        "paper": PAPER,
        "markdown": markdown,
    }
    path = args.output
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    egt.evaluation._atomic_write_text(path, json.dumps(result, indent=1) + "\n")
    print(markdown)
    print("Wrote", path)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="paper",
                        help="'paper', 'micro' or 5 comma-separated ints (default paper)")
    parser.add_argument("--epochs", type=int, default=50, help="training epochs (default 50)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    parser.add_argument("--lambda", dest="lam", type=float, default=0.3, help="λ (default 0.3)")
    parser.add_argument("--model", help="a trained .keras model to evaluate instead of training")
    parser.add_argument("--save-model", help="save the trained model here (.keras)")
    parser.add_argument("--max-accuracy-drop", type=float, default=0.005,
                        help="calibration: allowed drop below exit 5, fraction (default 0.005)")
    parser.add_argument("--timing-samples", type=int, default=300,
                        help="test samples timed at batch 1 (default 300)")
    parser.add_argument("--num-train", type=int, default=1363)
    parser.add_argument("--num-test", type=int, default=1364)
    parser.add_argument("--num-val", type=int, default=1364)
    parser.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    parser.add_argument("--verbose", type=int, default=2, help="Keras fit verbosity (default 2)")
    parser.add_argument("--output", default=RESULTS, help="the JSON to write")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: micro widths, 2 epochs, 180/180/180 samples, 20 timed")
    args = parser.parse_args(argv)
    if args.quick:
        args.widths, args.epochs = "micro", 2
        args.num_train = args.num_test = args.num_val = 180
        args.timing_samples = 20
        if args.output == RESULTS:
            args.output = os.path.join(HERE, "results", "cascade_quick.json")
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
