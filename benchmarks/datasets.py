"""The built-in radar gesture set: generation speed, cached load, and difficulty.

Measures, on the default set (1,363 training / 1,364 test samples, disjoint users):

* generation time (target <= 30 s on 2 cores) and cached load time (target <= 1 s),
  in a throw-away `KERAS_HOME`;
* accuracy of a multinomial logistic regression on the pixels (numpy, full-batch
  gradient descent with L2), which must sit clearly below
* a small CNN (4 conv blocks + dense, ~260k parameters), and
* a shallow model (one conv block + global pooling, like a first exit), plus the
  per-exit accuracies of a micro `EarlyExitCNN` when `--egt` is given.

    python benchmarks/datasets.py [--epochs 30] [--egt]

Results go to benchmarks/results/datasets.json; a markdown summary is printed.
"""

import argparse
import os
import sys
import tempfile
import time

import _common
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results", "datasets.json")
sys.path.insert(0, ROOT)


def _radar():
    # Imported directly so that timing the generator does not include Keras' import.
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "radar_gestures", os.path.join(ROOT, "keras_egt", "datasets", "radar_gestures.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def time_generation(rg):
    home = tempfile.mkdtemp(prefix="keras-home-")
    old = os.environ.get("KERAS_HOME")
    os.environ["KERAS_HOME"] = home
    try:
        start = time.perf_counter()
        data = rg.load_data()
        generate_s = time.perf_counter() - start
        loads = []
        for _ in range(3):
            start = time.perf_counter()
            cached = rg.load_data()
            loads.append(time.perf_counter() - start)
        identical = all(np.array_equal(a, b) for a, b in zip(
            (data[0][0], data[0][1], data[1][0], data[1][1]),
            (cached[0][0], cached[0][1], cached[1][0], cached[1][1])))
    finally:
        if old is None:
            del os.environ["KERAS_HOME"]
        else:
            os.environ["KERAS_HOME"] = old
    return data, generate_s, min(loads), identical


def logistic_regression(x_train, y_train, x_test, y_test, l2=1e-2, steps=300, lr=0.5):
    """Multinomial logistic regression on standardised pixels; returns test accuracy."""
    xtr = x_train.reshape(len(x_train), -1).astype(np.float64)
    xte = x_test.reshape(len(x_test), -1).astype(np.float64)
    mean, std = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xte = (xtr - mean) / std, (xte - mean) / std
    k = int(y_train.max()) + 1
    onehot = np.eye(k)[y_train]
    w = np.zeros((xtr.shape[1], k))
    b = np.zeros(k)
    velocity_w, velocity_b = np.zeros_like(w), np.zeros_like(b)
    for _ in range(steps):
        logits = xtr @ w + b
        logits -= logits.max(1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(1, keepdims=True)
        grad = (p - onehot) / len(xtr)
        gw = xtr.T @ grad + l2 * w
        gb = grad.sum(0)
        velocity_w = 0.9 * velocity_w - lr * gw / np.sqrt(xtr.shape[1] / 1000)
        velocity_b = 0.9 * velocity_b - lr * gb
        w += velocity_w
        b += velocity_b
    train_acc = float(np.mean(np.argmax(xtr @ w + b, 1) == y_train))
    test_acc = float(np.mean(np.argmax(xte @ w + b, 1) == y_test))
    return train_acc, test_acc


def _train(model, data, epochs, seed):
    import keras

    (x_train, y_train), (x_test, y_test) = data
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    model.fit(x_train, y_train, batch_size=32, epochs=epochs, verbose=0, shuffle=True)
    seconds = time.perf_counter() - start
    return float(model.evaluate(x_test, y_test, verbose=0)[1]), seconds


def small_cnn(input_shape, num_classes):
    import keras
    from keras import layers

    def block(filters):
        return [layers.Conv2D(filters, 3, padding="same", use_bias=False),
                layers.BatchNormalization(), layers.ReLU(), layers.MaxPooling2D()]

    # Flatten, not global pooling: the class is in *where* energy sits (Doppler sign,
    # azimuth vs elevation half), which global pooling after a few layers discards.
    return keras.Sequential(
        [keras.Input(input_shape), *block(32), *block(64), *block(128), *block(128),
         layers.Flatten(), layers.Dropout(0.3), layers.Dense(num_classes)],
        name="small_cnn",
    )


def shallow_model(input_shape, num_classes):
    """One conv block then global pooling: what a first exit can see.

    Its receptive field is a few pixels and the pooling is position-blind, so it
    reads local texture only (slopes, oscillations), not where energy sits.
    """
    import keras
    from keras import layers

    return keras.Sequential(
        [keras.Input(input_shape), layers.Conv2D(32, 3, padding="same", use_bias=False),
         layers.BatchNormalization(), layers.ReLU(), layers.MaxPooling2D(),
         layers.GlobalAveragePooling2D(), layers.Dense(num_classes)],
        name="shallow",
    )


def egt_exits(data, epochs):
    import keras

    import keras_egt as egt

    (x_train, y_train), (x_test, y_test) = data
    model = egt.EarlyExitCNN(9, x_train.shape[1:], widths="micro", consistency_weight=0.3)
    model.compile(keras.optimizers.Adam(1e-3))
    model.fit(x_train, y_train, batch_size=32, epochs=epochs, verbose=0)
    logits = model.predict(x_test, verbose=0)
    return [float(np.mean(np.argmax(np.asarray(l), -1) == y_test)) for l in logits]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--egt", action="store_true", help="also train a micro EarlyExitCNN")
    parser.add_argument("--skip-models", action="store_true", help="timings only")
    parser.add_argument("--output", default=RESULTS)
    parser.add_argument("--quick", action="store_true",
                        help="timings only, into results/datasets_quick.json")
    args = parser.parse_args()
    if args.quick:
        args.skip_models = True
        if args.output == RESULTS:
            args.output = os.path.join(os.path.dirname(RESULTS), "datasets_quick.json")

    rg = _radar()
    data, generate_s, load_s, identical = time_generation(rg)
    (x_train, y_train), (x_test, y_test) = data
    result = {
        "machine": _common.machine(numpy=np.__version__),
        "samples": int(len(x_train) + len(x_test)),
        "shape": list(x_train.shape[1:]),
        "generate_s": round(generate_s, 2),
        "cached_load_s": round(load_s, 3),
        "cached_equals_generated": identical,
    }
    print(f"generated {result['samples']} samples in {generate_s:.1f} s; cached load {load_s:.2f} s")
    if not args.skip_models:
        lr_train, lr_test = logistic_regression(x_train, y_train, x_test, y_test)
        result["logistic_regression"] = {"train_accuracy": round(lr_train, 4),
                                         "test_accuracy": round(lr_test, 4)}
        print(f"logistic regression: train {lr_train:.3f}, test {lr_test:.3f}")
        import keras

        keras.utils.set_random_seed(0)
        acc, sec = _train(small_cnn(x_train.shape[1:], 9), data, args.epochs, 0)
        result["small_cnn"] = {"test_accuracy": round(acc, 4), "epochs": args.epochs,
                               "train_s": round(sec, 1), "backend": keras.backend.backend()}
        print(f"small CNN: test {acc:.3f}")
        keras.utils.set_random_seed(0)
        acc, sec = _train(shallow_model(x_train.shape[1:], 9), data, args.epochs, 0)
        result["shallow"] = {"test_accuracy": round(acc, 4), "epochs": args.epochs}
        print(f"shallow (one block + global pooling): test {acc:.3f}")
        if args.egt:
            keras.utils.set_random_seed(0)
            exits = egt_exits(data, args.epochs)
            result["egt_micro_exit_accuracy"] = [round(a, 4) for a in exits]
            print("EGT micro per-exit test accuracy:", [f"{a:.3f}" for a in exits])

    _common.write_json(args.output, result, indent=2)
    print()
    print("| figure | value | target |")
    print("|---|---|---|")
    print(f"| generation, {result['samples']} samples ({os.cpu_count()} cores) | "
          f"{generate_s:.1f} s | <= 30 s |")
    print(f"| cached load | {load_s:.2f} s | <= 1 s |")
    if "small_cnn" in result:
        print(f"| logistic regression on pixels, test acc. | "
              f"{result['logistic_regression']['test_accuracy']:.3f} | clearly below the CNN |")
        print(f"| small CNN ({args.epochs} epochs), test acc. | "
              f"{result['small_cnn']['test_accuracy']:.3f} | ~0.95-0.99 |")
        print(f"| shallow model (1 block), test acc. | {result['shallow']['test_accuracy']:.3f} | "
              f"~0.70-0.90 |")
    if "egt_micro_exit_accuracy" in result:
        print(f"| EGT micro, exits 1-5 | {result['egt_micro_exit_accuracy']} | first < last |")


if __name__ == "__main__":
    main()
