"""The evidence behind the MCU preset: candidate stage layouts trained side by side.

Each candidate is an `EarlyExitMCU` stages string, trained with the paper's recipe
(λ = 0.3, seed 0; the rate halved every 30% of the epochs) on the built-in radar set
and evaluated on its test users at threshold 0.9 (float Keras): per-exit accuracy,
MACs to leave at each exit, the cascade's MAC speedup and accuracy, the oracle bound,
and the before-training flash / arena estimate. `keras_egt/mcu.py` says which choice
each comparison supports.

    KERAS_BACKEND=tensorflow nice python benchmarks/mcu_design.py --epochs 30 --names D G K
    python benchmarks/mcu_design.py --epochs 50 --names N M

Appends one JSON line per run to benchmarks/results/mcu_design.jsonl.
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "mcu_design.jsonl")

CANDIDATES = {
    # Full-resolution 3x3 conv, then max pooling: micro's layout, four exits.
    "micro": "c8p | c16p | c32p | c64p | c64",
    # Max pooling after cheap depthwise-separable blocks before exit 1, width late.
    "D": "c8p s16p s32p | c64 | c96p | c128",
    # Separable blocks after exit 1 as well.
    "F": "c8p s16p s32p | s64 s64 | c96p | c128",
    "G": "c8p s16p s32p | c64 | c96p | c96",
    "H": "c8p s24p s48p | c64 | c96p | c96",
    "I": "c8p s16p s32p | c64 c96p | c128",
    "J": "c8p s16p s32p s48 | c64 | c96p | c96",
    "K": "c8p c16p s32p | c64 | c96p | c96",
    "L": "c8p s16p s32p | c48 c64 | c96p | c96",
    # Late stages at 8x8: the MACs go after the early exits.
    "M": "c8p c16p s32p | c64 | c96 | c96p",
    "N": "c8p s16p s32p | c64 | c96 | c96p",
}


def run(name, stages, epochs, seed=0, lam=0.3):
    import keras

    import keras_egt as egt
    from keras_egt import budget, costs
    from keras_egt.datasets import radar_gestures

    (x_train, y_train), (x_test, y_test) = radar_gestures.load_data()
    keras.utils.set_random_seed(seed)
    model = egt.EarlyExitMCU(radar_gestures.NUM_CLASSES, x_train.shape[1:], stages=stages,
                             consistency_weight=lam)
    start = time.time()
    egt.recipe.fit(model, x_train, y_train, epochs=epochs,
                   decay_every=egt.defaults.decay_every(epochs), verbose=0)
    train_s = time.time() - start
    report = egt.evaluate(model, x_test, y_test, threshold=0.9, timing=False)
    estimate = budget.estimate_deployment(model)
    return {
        "name": name, "stages": stages, "epochs": epochs, "seed": seed, "lambda": lam,
        "train_s": round(train_s), "params": int(model.count_params()),
        "exit_accuracy": [round(float(a), 4) for a in report.exit_accuracy],
        "exit_macs": [int(v) for v in costs.exit_macs(model)],
        "final_only_macs": int(costs.final_only_macs(model)),
        "mac_speedup": round(float(report.mac_speedup), 3),
        "accuracy": round(float(report.accuracy), 4),
        "final_accuracy": round(float(report.final_accuracy), 4),
        "exit_shares": [round(float(s), 3) for s in report.exit_shares],
        "oracle_speedup": round(float(report.oracle["speedup"]), 3),
        "estimated_flash_bytes": estimate["total_flash_bytes"],
        "estimated_arena_bytes": estimate["max_arena_bytes"],
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", nargs="+", default=sorted(CANDIDATES))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--output", default=RESULTS)
    args = parser.parse_args(argv)
    for name in args.names:
        row = run(name, CANDIDATES[name], args.epochs)
        print(json.dumps(row), flush=True)
        with open(args.output, "a", encoding="utf-8") as f:  # one line per run
            f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
