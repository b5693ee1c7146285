"""EGT on an off-the-shelf backbone: MobileNetV2-0.35 with four exits, λ = 0 and 0.3.

The reproduction's settings (Adam 1e-3 halved every 15 epochs, batch 32, 50 epochs,
threshold 0.9) on the built-in radar set, with `keras.applications.MobileNetV2`
(alpha 0.35, random init) cut after `block_2_add`, `block_5_add`, `block_12_add` and
`out_relu`. Each model is evaluated on the test set (Table I, cascade, MACs); the
file is written after every model.

    python benchmarks/backbones.py                  # 50 epochs, both λ
    python benchmarks/backbones.py --epochs 20      # a shorter schedule (recorded)
    python benchmarks/backbones.py --quick          # smoke run -> backbones_quick.json
"""

import argparse
import os
import sys
import time

import _common

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "backbones.json")
EXIT_LAYERS = ["block_2_add", "block_5_add", "block_12_add", "out_relu"]


def mobilenet_v2(input_shape, alpha=0.35):
    import keras

    backbone = keras.applications.MobileNetV2(input_shape=input_shape, alpha=alpha,
                                              weights=None, include_top=False)
    # keras.applications' batch norm momentum 0.999 leaves the moving statistics near
    # their initial values for thousands of steps; 1,363 samples give 43 steps an
    # epoch. 0.9, as the paper's CNN (keras_egt.layers.BATCH_NORM_MOMENTUM).
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    return backbone


def run(args):
    import keras

    import keras_egt as egt
    from keras_egt.datasets import radar_gestures

    sizes = {k: v for k, v in (("num_train", args.num_train), ("num_test", args.num_test)) if v}
    (x_train, y_train), (x_test, y_test) = radar_gestures.load_data(**sizes)
    settings = {"backbone": "MobileNetV2", "alpha": args.alpha, "exit_layers": EXIT_LAYERS,
                "epochs": args.epochs, "batch_size": egt.recipe.BATCH_SIZE,
                "learning_rate": egt.recipe.LEARNING_RATE, "decay_every": egt.recipe.DECAY_EVERY,
                "threshold": args.threshold, "seed": args.seed,
                "num_train": len(x_train), "num_test": len(x_test)}
    result = {"settings": settings, "backend": keras.backend.backend(),
              "machine": _common.machine(), "models": {}}
    for lam in args.lambdas:
        name = "Baseline" if lam == 0 else f"EGT (λ = {lam:g})"
        keras.utils.set_random_seed(args.seed)
        model = egt.EarlyExitModel(mobilenet_v2(x_train.shape[1:], args.alpha), EXIT_LAYERS,
                                   radar_gestures.NUM_CLASSES, consistency_weight=lam)
        start = time.time()
        egt.recipe.fit(model, x_train, y_train, epochs=args.epochs, verbose=2)
        seconds = time.time() - start
        report = egt.evaluate(model, x_test, y_test, threshold=args.threshold, timing=False,
                              name=name)
        print(report.to_markdown(), flush=True)
        result["models"][name] = {"train_seconds": seconds, "report": report.to_dict()}
        _common.write_json(args.output, result, indent=2)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--lambdas", default="0,0.3")
    parser.add_argument("--alpha", type=float, default=0.35)
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-train", type=int, default=None)
    parser.add_argument("--num-test", type=int, default=None)
    parser.add_argument("--output", default=RESULTS)
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    args = parser.parse_args(argv)
    args.lambdas = [float(v) for v in args.lambdas.split(",")]
    if args.quick:
        args.epochs, args.num_train, args.num_test = 1, 120, 60
        args.output = RESULTS.replace(".json", "_quick.json")
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
