"""Training-step time of EGT (λ = 0.3) vs λ = 0 vs a plain single-exit CNN.

All three share the paper's backbone. They are timed side by side in one process,
interleaved round by round so that machine noise hits all of them alike; the
figure that matters is the ratio EGT / λ=0 (target ≤ 1.10).

    KERAS_BACKEND=jax python benchmarks/train_step.py            # one backend
    python benchmarks/train_step.py --all-backends               # each in a subprocess

Results are merged into benchmarks/results/train_step.json, keyed by backend.
"""

import argparse
import json
import os
import subprocess
import sys
import time

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "train_step.json")


def _plain_cnn(widths, input_shape, num_classes):
    import keras

    from keras_egt.layers import ConvBlock

    blocks = [ConvBlock(w, pool=k < 4, name=f"block_{k + 1}") for k, w in enumerate(widths)]
    return keras.Sequential(
        [keras.Input(input_shape), *blocks, keras.layers.GlobalAveragePooling2D(),
         keras.layers.Dense(num_classes)],
        name="plain_cnn",
    )


def measure(widths, batch_size, steps, rounds, image_size):
    import keras
    import numpy as np

    import keras_egt as egt

    input_shape = (image_size, image_size, 2)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch_size,) + input_shape).astype("float32")
    y = rng.integers(0, 9, size=batch_size)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    models = {
        "egt_lambda_0.3": egt.EarlyExitCNN(9, input_shape, widths=widths, consistency_weight=0.3),
        "lambda_0": egt.EarlyExitCNN(9, input_shape, widths=widths, consistency_weight=0.0),
        "plain_cnn": _plain_cnn(egt.cnn.resolve_widths(widths), input_shape, 9),
    }
    for model in models.values():
        model.compile(keras.optimizers.Adam(1e-3), loss=loss)
        for _ in range(3):  # compile / trace / warm caches
            model.train_on_batch(x, y)
    times = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            start = time.perf_counter()
            for _ in range(steps):
                model.train_on_batch(x, y)
            times[name].append((time.perf_counter() - start) / steps)
    median = {name: float(np.median(t)) for name, t in times.items()}
    return {
        "backend": keras.backend.backend(),
        "widths": list(egt.cnn.resolve_widths(widths)),
        "batch_size": batch_size,
        "input_shape": list(input_shape),
        "rounds": rounds,
        "steps_per_round": steps,
        "seconds_per_step": median,
        "egt_over_lambda0": median["egt_lambda_0.3"] / median["lambda_0"],
        "egt_over_plain": median["egt_lambda_0.3"] / median["plain_cnn"],
    }


def _merge(result, path=RESULTS):
    data = {}
    if os.path.exists(path):
        with open(path) as f:
            data = json.load(f)
    data[result["backend"]] = result
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="paper", help='"paper", "micro" or 5 comma-separated ints')
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--all-backends", action="store_true", help="run each backend in a subprocess")
    parser.add_argument("--quick", action="store_true", help="micro widths, 1 step x 2 rounds")
    args = parser.parse_args(argv)
    if args.quick:
        args.widths, args.steps, args.rounds = "micro", 1, 2
    if args.all_backends:
        passthrough = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--all-backends"]
        for backend in ["tensorflow", "jax", "torch"]:
            env = dict(os.environ, KERAS_BACKEND=backend)
            subprocess.run([sys.executable, os.path.abspath(__file__), *passthrough], env=env, check=True)
        return 0
    widths = args.widths if args.widths in ("paper", "micro") else tuple(int(w) for w in args.widths.split(","))
    result = measure(widths, args.batch_size, args.steps, args.rounds, args.image_size)
    # A smoke run must not overwrite the measured figures.
    _merge(result, RESULTS.replace(".json", "_quick.json") if args.quick else RESULTS)
    s = result["seconds_per_step"]
    print(
        f"{result['backend']}: EGT {1e3 * s['egt_lambda_0.3']:.1f} ms/step, λ=0 {1e3 * s['lambda_0']:.1f}, "
        f"plain {1e3 * s['plain_cnn']:.1f}; EGT/λ=0 = {result['egt_over_lambda0']:.3f}, "
        f"EGT/plain = {result['egt_over_plain']:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
