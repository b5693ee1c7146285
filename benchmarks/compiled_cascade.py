"""Float batch-1 time of the cascade: one compiled call vs one compiled call per segment.

On the current Keras backend (run it once per backend), for a model trained `--epochs`
epochs on the radar set, batch 1 on `--samples` test samples, the three paths
interleaved sample by sample (machine noise hits them alike):

* `final_only`: every stage and the final head as one compiled call (no early exit);
* `segmented`: each segment (stage k + head k) a compiled call, the exit test in
  Python between them (what `evaluation.time_per_sample` timed before
  `CompiledCascade`);
* `compiled`: `keras_egt.compiled_cascade.CompiledCascade`, the whole early-exit path
  one traced call whose untaken branches never run.

Speedups are `final_only / path`, beside the cascade's MAC speedup; the target (issue
12) is time speedup >= 0.8 x MAC speedup.

    KERAS_BACKEND=jax nice python benchmarks/compiled_cascade.py --epochs 3

Writes benchmarks/results/compiled_cascade_<backend>.json.
"""

import argparse
import os
import time

import _common

HERE = os.path.dirname(os.path.abspath(__file__))


def measure(model, x, threshold, samples, warmup=5):
    import numpy as np
    from keras import ops

    from keras_egt import cascade, metrics
    from keras_egt.compiled_cascade import CompiledCascade

    rule = cascade.Cascade(model, threshold)
    thresholds, last = rule.thresholds, model.num_exits - 1

    def segment(k):
        def fn(h):
            h = model.stages[k](h, training=False)
            return h, model.heads[k](h)

        return metrics.compile_inference(fn)

    def full_fn(h):
        for stage in model.stages:
            h = stage(h, training=False)
        return model.heads[-1](h)

    segments = [segment(k) for k in range(model.num_exits)]
    full = metrics.compile_inference(full_fn)
    compiled = CompiledCascade(model, thresholds, rule.criterion)

    def final_only(sample):
        return None, int(np.argmax(ops.convert_to_numpy(full(sample))[0]))

    def segmented(sample):
        h = sample
        for k in range(model.num_exits):
            h, logits = segments[k](h)
            p = metrics.softmax(logits)
            if k == last or cascade.should_exit(p, thresholds[k], rule.criterion)[0]:
                return k, int(np.argmax(p[0]))

    def one_call(sample):
        label, k = compiled(sample)
        return k, label

    paths = {"final_only": final_only, "segmented": segmented, "compiled": one_call}
    tensors = [ops.convert_to_tensor(x[i : i + 1], model.compute_dtype) for i in range(len(x))]
    for i in range(min(warmup, len(x))):
        h = tensors[i]
        for seg in segments:  # traces every segment
            h, logits = seg(h)
        for fn in paths.values():
            fn(tensors[i])
    times = {k: [] for k in paths}
    exits = []
    names = list(paths)
    clock = time.perf_counter
    for i in range(min(samples, len(x))):
        order = names[i % 3:] + names[: i % 3]
        for name in order:
            start = clock()
            k, _ = paths[name](tensors[i])
            times[name].append(clock() - start)
            if name == "compiled":
                exits.append(k)
    mean = {k: 1000 * float(np.mean(v)) for k, v in times.items()}
    median = {k: 1000 * float(np.median(v)) for k, v in times.items()}
    mac_speedup = rule.speedup(np.asarray(exits))
    return {
        "samples": len(exits),
        "threshold": float(threshold),
        "exit_shares": cascade.exit_shares(exits, model.num_exits),
        "mean_ms": mean,
        "median_ms": median,
        "mac_speedup": mac_speedup,
        "time_speedup_compiled": mean["final_only"] / mean["compiled"],
        "time_speedup_segmented": mean["final_only"] / mean["segmented"],
        "median_time_speedup_compiled": median["final_only"] / median["compiled"],
        "median_time_speedup_segmented": median["final_only"] / median["segmented"],
        "time_over_mac_speedup_compiled": mean["final_only"] / mean["compiled"] / mac_speedup,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="micro")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.9, 0.7])
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)

    import keras

    import keras_egt as egt
    from keras_egt.datasets import radar_gestures

    (x_train, y_train), (x_test, y_test) = radar_gestures.load_data()
    keras.utils.set_random_seed(0)
    model = egt.EarlyExitCNN(9, x_train.shape[1:], widths=args.widths)
    start = time.time()
    egt.recipe.fit(model, x_train, y_train, epochs=args.epochs, verbose=2)
    result = {"backend": keras.backend.backend(), "widths": list(model.widths),
              "epochs": args.epochs, "train_seconds": time.time() - start,
              "final_exit_accuracy": float(
                  (egt.metrics.exit_probabilities(model, x_test)[-1].argmax(-1) == y_test).mean()),
              "machine": _common.machine(),
              "runs": [measure(model, x_test, t, args.samples) for t in args.thresholds]}
    output = args.output or os.path.join(HERE, "results",
                                         f"compiled_cascade_{result['backend']}.json")
    _common.write_json(output, result)
    for run in result["runs"]:
        print(f"{result['backend']} threshold {run['threshold']}: MACs {run['mac_speedup']:.2f}x, "
              f"time compiled {run['time_speedup_compiled']:.2f}x, segmented "
              f"{run['time_speedup_segmented']:.2f}x; ms {run['mean_ms']}")
    print(f"Wrote {output}")


if __name__ == "__main__":
    main()
