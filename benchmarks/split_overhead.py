"""Split overhead on the TFLM interpreter: K segments back to back vs one unsplit int8 model.

All through the same converter path (`keras_egt.export.convert.convert_segment`, full
int8, calibrated on the same radar training samples), batch 1, interleaved sample by
sample so machine noise hits every variant alike:

* `final_only`: one int8 model, every stage and the final head (the model without
  early exit, the reference of the speedups);
* `unsplit_all_heads`: one int8 model, every stage and *every* head (the same compute
  as the K segments, without the cuts): `unsplit_all_heads / final_only` is the price
  of the early heads themselves, `segments_invoke / unsplit_all_heads` that of cutting;
* `segments_invoke`: the K exported segments, only `invoke()` timed (sum over segments);
* `segments_runtime`: the same through `CascadeRunner.run_segments` (quantize, set
  input, invoke, read outputs, hand the features on: the Python path users run).

The weights are those of a model trained for `--epochs` epochs (timing on TFLM's
reference kernels does not depend on the weights' values).

    KERAS_BACKEND=tensorflow nice python benchmarks/split_overhead.py --samples 200

Writes benchmarks/results/split_overhead.json.
"""

import argparse
import json
import os
import sys
import tempfile
import time

import _common

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "split_overhead.json")


def _unsplit(model, all_heads):
    """One Keras model: every stage, then the final head (or every head)."""
    import keras
    from keras import ops

    class Unsplit(keras.Model):
        def __init__(self, source, **kwargs):
            super().__init__(**kwargs)
            self.source_stages = list(source.stages)
            self.source_heads = list(source.heads)

        def call(self, x):
            outputs = []
            last = len(self.source_stages) - 1
            for k, stage in enumerate(self.source_stages):
                x = stage(x, training=False)
                if all_heads or k == last:
                    outputs.append(ops.softmax(ops.cast(self.source_heads[k](x), "float32")))
            return outputs if all_heads else outputs[0]

    unsplit = Unsplit(model, name="all_heads" if all_heads else "final_only")
    unsplit(keras.ops.zeros((1,) + tuple(model.image_shape)))
    return unsplit


def _interpreter(model, calibration, name):
    from tflite_micro.python.tflite_micro import runtime as tflm

    from keras_egt.export import convert
    from keras_egt.export import runtime as rt

    data = convert.convert_segment(model, calibration, name=name)
    info = convert.inspect_tflite(data)
    convert.check_full_int8(info, name)
    spec = info["inputs"][0]
    arena = rt.tflm_arena_bytes(data, spec["shape"], spec["zero_point"][0])
    return tflm.Interpreter.from_bytes(data, arena_size=arena), spec, len(data), arena


def measure(model, calibration, x, work):
    import numpy as np

    from keras_egt import costs, export
    from keras_egt.export import runtime as rt

    deploy = os.path.join(work, "deploy")
    manifest = export.export_cascade(model, deploy, calibration, threshold=0.9)
    runner = export.load_cascade(deploy, runtime="tflm")
    final, spec, final_flash, final_arena = _interpreter(_unsplit(model, False), calibration,
                                                          "final-only model")
    every, _, every_flash, every_arena = _interpreter(_unsplit(model, True), calibration,
                                                      "all-heads model")
    q = rt.quantize(x, spec["scale"][0], spec["zero_point"][0])
    segments = [s.interpreter for s in runner._segments]
    feature_index = [s.features for s in runner._segments]
    names = ("final_only", "unsplit_all_heads", "segments_invoke", "segments_runtime")
    times = {k: [] for k in names}
    # TFLM runs on one thread: its CPU time is what the interpreter costs, and unlike
    # wall clock it does not count the time other processes hold the core.
    clock = time.thread_time

    def one(i):
        sample = q[i : i + 1]
        start = clock()
        final.set_input(sample, 0)
        final.invoke()
        final.get_output(0)
        times["final_only"].append(clock() - start)
        start = clock()
        every.set_input(sample, 0)
        every.invoke()
        every.get_output(0)
        times["unsplit_all_heads"].append(clock() - start)
        h, spent = sample, 0.0
        for interpreter, features in zip(segments, feature_index):
            interpreter.set_input(h, 0)
            start = clock()
            interpreter.invoke()
            spent += clock() - start
            if features is not None:
                h = interpreter.get_output(features)
        times["segments_invoke"].append(spent)
        start = clock()
        runner.run_segments(sample)
        times["segments_runtime"].append(clock() - start)

    one(0)  # first invocations initialise kernels: not timed
    for k in names:
        times[k].clear()
    for i in range(len(q)):
        one(i)
    mean = {k: 1000 * float(np.mean(v)) for k, v in times.items()}
    median = {k: 1000 * float(np.median(v)) for k, v in times.items()}
    exit_macs = costs.exit_macs(model)
    return {
        "samples": int(len(q)),
        "widths": list(getattr(model, "widths", [])),
        "mean_ms": mean,
        "median_ms": median,
        "split_overhead_vs_final_only_runtime": mean["segments_runtime"] / mean["final_only"] - 1,
        "split_overhead_vs_final_only_invoke": mean["segments_invoke"] / mean["final_only"] - 1,
        "early_heads_overhead_time": mean["unsplit_all_heads"] / mean["final_only"] - 1,
        "cut_overhead_time": mean["segments_invoke"] / mean["unsplit_all_heads"] - 1,
        "python_overhead_time": mean["segments_runtime"] / mean["segments_invoke"] - 1,
        "early_heads_overhead_macs": exit_macs[-1] / costs.final_only_macs(model) - 1,
        "final_only_flash_bytes": final_flash, "final_only_arena_bytes": int(final_arena),
        "all_heads_flash_bytes": every_flash, "all_heads_arena_bytes": int(every_arena),
        "segments_flash_bytes": sum(s["flash_bytes"] for s in manifest["segments"]),
        "segments_arena_bytes": max(s["arena_bytes"] for s in manifest["segments"]),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="micro")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--num-calibration", type=int, default=128)
    parser.add_argument("--output", default=RESULTS)
    args = parser.parse_args(argv)

    import keras

    if keras.backend.backend() != "tensorflow":
        sys.exit("benchmarks/split_overhead.py needs KERAS_BACKEND=tensorflow (export).")
    import keras_egt as egt
    from keras_egt.datasets import radar_gestures

    (x_train, y_train), (x_test, _) = radar_gestures.load_data()
    keras.utils.set_random_seed(0)
    model = egt.EarlyExitCNN(9, x_train.shape[1:], widths=args.widths)
    if args.epochs:
        egt.recipe.fit(model, x_train, y_train, epochs=args.epochs, verbose=2)
    calibration = x_train[:: max(1, len(x_train) // args.num_calibration)][: args.num_calibration]
    with tempfile.TemporaryDirectory(prefix="keras_egt_split_") as work:
        result = measure(model, calibration, x_test[: args.samples], work)
    result.update(settings=vars(args), machine=_common.machine())
    _common.write_json(args.output, result)
    print(json.dumps({k: v for k, v in result.items() if k not in ("settings", "machine")},
                     indent=1))


if __name__ == "__main__":
    main()
