"""Reproduce the paper's Tables I and II: the baseline and EGT for λ = 0.1 ... 0.5.

The paper's settings are the defaults: the 64-128-256-512-512 backbone, 50 epochs,
Adam at 1e-3 halved every 15 epochs (`StepDecay(15, 0.5)`), on the built-in radar
gestures (1,363 training and 1,364 test samples, 9 classes), early exit at a max
probability of 0.9. The paper gives no batch size; we use 32.

Every model is trained from the same seed, evaluated on the test set
(`egt.evaluate`: per-exit consistency and accuracy, cascade accuracy, MACs, batch-1
time with and without early exit), and the script prints Table I and Table II for all
of them side by side. The output folder receives each model (`.keras`), each report
(`.json`), `tables.md`, `consistency.png` and the EGT models' exit histograms.

    python examples/reproduce_paper.py                                    # the full run
    python examples/reproduce_paper.py --widths micro --epochs 3 \\
        --lambdas 0.3 --num-train 180 --num-test 180 --output-dir /tmp/egt  # a quick look

At paper widths one epoch takes about a minute on a 2-core CPU (six models x 50
epochs: about five hours); a GPU makes it minutes.
"""

import argparse
import os
import sys


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=50, help="training epochs (default 50)")
    parser.add_argument("--widths", default="paper",
                        help="'paper', 'micro' or 5 comma-separated ints (default paper)")
    parser.add_argument("--lambdas", default="0.1,0.2,0.3,0.4,0.5",
                        help="comma-separated λ of the EGT models (default 0.1,...,0.5); "
                        "the baseline (λ = 0) is always trained")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    parser.add_argument("--threshold", type=float, default=0.9,
                        help="early-exit threshold on the max probability (default 0.9)")
    parser.add_argument("--num-train", type=int, default=1363, help="training samples")
    parser.add_argument("--num-test", type=int, default=1364, help="test samples")
    parser.add_argument("--timing-samples", type=int, default=200,
                        help="test samples timed at batch 1 (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    parser.add_argument("--verbose", type=int, default=2, choices=(0, 1, 2),
                        help="Keras fit verbosity (default 2: one line per epoch)")
    parser.add_argument("--output-dir", default="egt-paper",
                        help="folder for models, reports and figures (default egt-paper)")
    args = parser.parse_args(argv)
    try:
        args.lambdas = [float(v) for v in args.lambdas.split(",") if v.strip()]
    except ValueError:
        parser.error(f"--lambdas must be comma-separated numbers, got {args.lambdas!r}")
    from keras_egt.cnn import resolve_widths

    try:
        resolve_widths(args.widths)
    except ValueError as error:
        parser.error(f"--widths: {error}")
    return args


def main(argv=None):
    args = parse_args(argv)

    import keras

    import keras_egt as egt
    from keras_egt.cli.train import save_model
    from keras_egt.datasets import radar_gestures

    (x_train, y_train), (x_test, y_test) = radar_gestures.load_data(
        num_train=args.num_train, num_test=args.num_test)
    os.makedirs(args.output_dir, exist_ok=True)
    reports = {}
    for lam in [0.0] + [v for v in args.lambdas if v != 0]:
        name = "Baseline" if lam == 0 else f"EGT (λ = {lam:g})"
        print(f"\n=== {name}: widths {args.widths}, {args.epochs} epochs", flush=True)
        keras.utils.set_random_seed(args.seed)
        model = egt.EarlyExitCNN(radar_gestures.NUM_CLASSES, x_train.shape[1:],
                                 widths=args.widths, consistency_weight=lam)
        egt.recipe.fit(model, x_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
                       verbose=args.verbose)
        stem = os.path.join(args.output_dir, "baseline" if lam == 0 else f"egt_lambda_{lam:g}")
        save_model(model, stem + ".keras")
        report = egt.evaluate(model, x_test, y_test, threshold=args.threshold,
                              timing_samples=args.timing_samples, name=name)
        report.to_json(stem + ".json")
        if lam:
            egt.plots.exit_histogram(report, stem + "_exits.png", title=f"{name}: exit shares")
        reports[name] = report
        print(report.to_markdown(), flush=True)

    tables = egt.evaluation.compare_markdown(reports)
    egt.atomic.write_text(os.path.join(args.output_dir, "tables.md"), tables + "\n")
    egt.plots.consistency_bars(reports, os.path.join(args.output_dir, "consistency.png"))
    print("\n" + tables)
    print(f"\nModels, reports and figures in {args.output_dir}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
