"""Deployment benchmark: the split int8 cascade on LiteRT and TFLM, micro and paper widths.

For each preset: train an EGT model (λ = 0.3) on the built-in radar set, or load one
with --model-micro / --model-paper, then

* export it (post-training quantization, 256 calibration samples) and report flash
  and TFLM arena bytes per segment, and whether `micro` fits the MCU budget (total
  flash ≤ 256 KiB, largest arena ≤ 64 KiB);
* run the int8 cascade (threshold 0.9) on the radar test set on LiteRT and TFLM and
  compare it with the float Keras cascade: accuracy, top-1 label and exit agreement,
  and per segment the int8 vs float top-1 agreement and accuracy;
* time it on the TFLM interpreter, batch 1: cascade vs all five segments vs one int8
  model without early exit (blocks 1-5 and the last head), with the MAC speedup;
* fine-tune with quantization-aware training (tfmot), export again and compare the
  int8 accuracy loss with PTQ's.

    KERAS_BACKEND=tensorflow python benchmarks/deploy.py                 # both presets
    python benchmarks/deploy.py --presets micro --epochs 30
    python benchmarks/deploy.py --model-paper paper.keras --tflm-samples 100
    python benchmarks/deploy.py --quick                                  # smoke run

Writes benchmarks/results/deploy.json (with a markdown summary). On the project's
2-core CPU, paper widths train slowly (use --model-paper with a model trained
elsewhere, e.g. by benchmarks/reproduce.py --save-models) and TFLM's reference kernels
take ~0.4 s per paper-width sample (--tflm-samples limits the TFLM runs).
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import _common

from keras_egt import defaults

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "deploy.json")
KIB = 1024
MCU_FLASH, MCU_ARENA = 256 * KIB, 64 * KIB


def _train(preset, x_train, y_train, epochs, seed, lam):
    import keras

    import keras_egt as egt

    keras.utils.set_random_seed(seed)
    model = egt.EarlyExitCNN(9, x_train.shape[1:], widths=preset, consistency_weight=lam)
    start = time.time()
    egt.recipe.fit(model, x_train, y_train, epochs=epochs, verbose=2)
    return model, time.time() - start


def _load(path):
    """A model from a `.keras` file, or from `NAME.weights.h5` + `NAME.json` (its config,
    as benchmarks/reproduce.py --save-models writes them)."""
    import keras

    import keras_egt as egt

    if path.endswith(".weights.h5"):
        with open(path[: -len(".weights.h5")] + ".json") as f:
            model = egt.EarlyExitCNN.from_config(json.load(f))
        model.load_weights(path)
        return model
    return keras.saving.load_model(path, compile=False)


class _FinalOnly:
    """Blocks 1-5 and the last head: the int8 model without early exit, for timing."""

    @staticmethod
    def build(model):
        import keras
        from keras import ops

        class FinalOnly(keras.Model):
            def __init__(self, source, **kwargs):
                super().__init__(**kwargs)
                self.source_blocks = list(source.blocks)
                self.head = source.heads[-1]

            def call(self, x):
                for block in self.source_blocks:
                    x = block(x, training=False)
                return ops.softmax(self.head(x), axis=-1)

        final = FinalOnly(model, name="final_only")
        final(keras.ops.zeros((1,) + tuple(model.image_shape)))
        return final


def _parity(runner, q, p_float, float_labels, float_exits, y, rows, threshold):
    """Int8 (from run_segments output `q`) vs float, on `rows` of the test set."""
    import numpy as np

    from keras_egt import export

    labels, exits = export.decide_int8(q, runner.thresholds_int8)
    p_int8 = runner.probabilities(q)
    pf = p_float[:, rows]
    per_exit = []
    for k in range(5):
        per_exit.append({
            "float_accuracy": float(np.mean(pf[k].argmax(-1) == y[rows])),
            "int8_accuracy": float(np.mean(p_int8[k].argmax(-1) == y[rows])),
            "top1_agreement": float(np.mean(p_int8[k].argmax(-1) == pf[k].argmax(-1))),
            "mean_abs_probability_error": float(np.mean(np.abs(p_int8[k] - pf[k]))),
            "mean_abs_confidence_error": float(np.mean(np.abs(p_int8[k].max(-1) - pf[k].max(-1)))),
        })
    # Where the exits differ, how close was the float confidence to the threshold at
    # the first exit the two cascades decided differently?
    margins = []
    for i in np.flatnonzero(exits != float_exits[rows]):
        k = min(exits[i], float_exits[rows][i])
        margins.append(abs(float(pf[k, i].max()) - threshold))
    return {
        "samples": int(len(rows)),
        "exit_disagreements": int(len(margins)),
        "exit_disagreement_margin_max": float(max(margins)) if margins else 0.0,
        "exit_disagreement_margin_median": float(np.median(margins)) if margins else 0.0,
        "accuracy": float(np.mean(labels == y[rows])),
        "float_accuracy": float(np.mean(float_labels[rows] == y[rows])),
        "label_agreement": float(np.mean(labels == float_labels[rows])),
        "exit_agreement": float(np.mean(exits == float_exits[rows])),
        "exit_shares": [float(v) for v in np.bincount(exits, minlength=5) / len(rows)],
        "per_exit": per_exit,
    }


# One step of an int8 softmax output (scale 1/256): the finest a deployed exit's
# confidence can be.
INT8_STEP = 1 / 256


def _near_threshold(p_float, threshold, steps=(1, 2, 4)):
    """Share of samples whose float confidence lies within `s` int8 steps of the
    threshold at some exit the float cascade consults (exits 1-4, up to its own).

    An int8 error of that size can move such a sample's exit, whatever the export
    does, so these shares bound how closely int8 and float exit indices can agree.
    """
    import numpy as np

    confidence = p_float.max(-1)
    margin = np.full(confidence.shape[1], np.inf)
    alive = np.ones(confidence.shape[1], bool)
    for k in range(confidence.shape[0] - 1):
        margin[alive] = np.minimum(margin[alive], np.abs(confidence[k, alive] - threshold))
        alive &= confidence[k] < threshold
    return {str(s): float(np.mean(margin <= s * INT8_STEP)) for s in steps}


def _timing(deploy, model, calibration, x, samples):
    """Batch-1 TFLM time: cascade, all five segments, and a final-only int8 model.

    The three run back to back on each sample (interleaved), so that machine noise
    hits them alike; medians over samples are reported with the means.
    """
    import numpy as np
    from tflite_micro.python.tflite_micro import runtime as tflm

    from keras_egt import costs, export
    from keras_egt.export import convert
    from keras_egt.export import runtime as rt

    runner = export.load_cascade(deploy, runtime="tflm")
    final = _FinalOnly.build(model)
    data = convert.convert_segment(final, calibration, name="final-only model")
    info = convert.inspect_tflite(data)
    convert.check_full_int8(info, "final-only model")
    spec = info["inputs"][0]
    arena = rt.tflm_arena_bytes(data, spec["shape"], spec["zero_point"][0])
    interpreter = tflm.Interpreter.from_bytes(data, arena_size=arena)
    xs = x[:samples]
    q = rt.quantize(xs, spec["scale"][0], spec["zero_point"][0])
    times = {"cascade": [], "all_segments": [], "final_only": []}
    exits = []
    runner.run_segments(xs[:1])  # first invocations initialise kernels: not timed
    interpreter.set_input(q[:1], 0)
    interpreter.invoke()
    for i in range(len(xs)):
        _, e = runner.predict(xs[i : i + 1])
        times["cascade"].append(runner.last_seconds[0])
        exits.append(int(e[0]))
        runner.run_segments(xs[i : i + 1])
        times["all_segments"].append(runner.last_seconds[0])
        start = time.perf_counter()
        interpreter.set_input(q[i : i + 1], 0)
        interpreter.invoke()
        interpreter.get_output(0)
        times["final_only"].append(time.perf_counter() - start)
    mean = {k: 1000 * float(np.mean(v)) for k, v in times.items()}
    median = {k: 1000 * float(np.median(v)) for k, v in times.items()}
    exit_macs = costs.exit_macs(model)
    cascade_macs = float(np.mean(np.asarray(exit_macs, np.float64)[exits]))
    return {
        "samples": int(len(xs)),
        "cascade_ms": mean["cascade"],
        "all_segments_ms": mean["all_segments"],
        "final_only_ms": mean["final_only"],
        "median_ms": median,
        "speedup_time_vs_final_only": mean["final_only"] / mean["cascade"],
        "speedup_time_vs_all_segments": mean["all_segments"] / mean["cascade"],
        "cascade_macs": cascade_macs,
        "final_only_macs": int(costs.final_only_macs(model)),
        "all_segments_macs": int(exit_macs[-1]),
        "speedup_macs_vs_final_only": costs.final_only_macs(model) / cascade_macs,
        "final_only_flash_bytes": len(data),
        "final_only_arena_bytes": int(arena),
    }


def _evaluate_export(deploy, p_float, float_labels, float_exits, x_test, y_test, tflm_rows,
                     threshold, reference=None):
    import numpy as np

    from keras_egt import export

    out = {}
    for runtime, rows in (("litert", np.arange(len(x_test))), ("tflm", tflm_rows)):
        runner = export.load_cascade(deploy, runtime=runtime)
        start = time.time()
        q = runner.run_segments(x_test[rows])
        out[runtime] = _parity(runner, q, p_float, float_labels, float_exits, y_test, rows,
                               threshold)
        if reference is not None:  # also against another float model (QAT: the fine-tuned one)
            ref = _parity(runner, q, *reference, y_test, rows, threshold)
            out[runtime]["vs_finetuned_float"] = {
                k: ref[k] for k in ("float_accuracy", "label_agreement", "exit_agreement",
                                    "exit_disagreements")}
        out[runtime]["seconds"] = time.time() - start
        print(f"    {runtime}: int8 accuracy {100 * out[runtime]['accuracy']:.2f}% "
              f"(float {100 * out[runtime]['float_accuracy']:.2f}%), agreement labels "
              f"{100 * out[runtime]['label_agreement']:.2f}% exits "
              f"{100 * out[runtime]['exit_agreement']:.2f}% on {len(rows)} samples", flush=True)
    return out


def _sizes(manifest):
    segments = [{
        "flash_bytes": s["flash_bytes"], "arena_bytes": s["arena_bytes"],
        "arena_recorded_bytes": s.get("arena_recorded_bytes"), "macs": s["macs"],
        "threshold_int8": s["threshold_int8"], "ops": s["ops"],
    } for s in manifest["segments"]]
    flash = sum(s["flash_bytes"] for s in segments)
    arena = max(s["arena_bytes"] for s in segments)
    return {"segments": segments, "flash_total_bytes": flash, "arena_max_bytes": arena,
            "fits_mcu_budget": flash <= MCU_FLASH and arena <= MCU_ARENA}


def run_preset(preset, args, data, work):
    import keras
    import numpy as np

    import keras_egt as egt
    from keras_egt import export
    from keras_egt.export import qat

    (x_train, y_train), (x_test, y_test) = data
    model_path = getattr(args, f"model_{preset}")
    result = {"preset": preset}
    if model_path:
        print(f"== {preset}: loading {model_path}", flush=True)
        model = _load(model_path)
        result.update(model_source=model_path, epochs=None, train_seconds=None)
    else:
        print(f"== {preset}: training {args.epochs} epochs (λ = {args.lam})", flush=True)
        model, seconds = _train(preset, x_train, y_train, args.epochs, args.seed, args.lam)
        result.update(model_source="trained here", epochs=args.epochs, train_seconds=seconds)
        if args.save_models:
            os.makedirs(args.save_models, exist_ok=True)
            model.save(os.path.join(args.save_models, f"{preset}.keras"))
    result["widths"] = list(model.widths)
    rng = np.random.default_rng(args.seed)
    calibration = x_train[np.sort(rng.choice(len(x_train), min(args.num_calibration, len(x_train)),
                                             replace=False))]
    p_float = egt.metrics.exit_probabilities(model, x_test)
    float_labels, float_exits = egt.Cascade(model, threshold=args.threshold).predict(x_test)
    result["float"] = {
        "cascade_accuracy": float(np.mean(float_labels == y_test)),
        "exit_accuracies": [float(v) for v in (p_float.argmax(-1) == y_test).mean(axis=1)],
        "exit_shares": [float(v) for v in np.bincount(float_exits, minlength=5) / len(y_test)],
        "near_threshold": _near_threshold(p_float, args.threshold),
    }
    tflm_samples = args.tflm_samples if args.tflm_samples else len(x_test)
    tflm_rows = np.arange(min(tflm_samples, len(x_test)))

    deploy = os.path.join(work, f"{preset}_ptq")
    start = time.time()
    manifest = export.export_cascade(model, deploy, calibration, threshold=args.threshold)
    result["ptq"] = {"export_seconds": time.time() - start, **_sizes(manifest)}
    print(export.format_report(manifest, title=f"{preset} PTQ"), flush=True)
    result["ptq"].update(_evaluate_export(deploy, p_float, float_labels, float_exits,
                                          x_test, y_test, tflm_rows, args.threshold))
    timing_samples = min(args.timing_samples, len(x_test))
    result["timing_tflm"] = _timing(deploy, model, calibration, x_test, timing_samples)
    print(f"    TFLM time/sample: cascade {result['timing_tflm']['cascade_ms']:.2f} ms, "
          f"final-only {result['timing_tflm']['final_only_ms']:.2f} ms", flush=True)

    if args.qat_epochs > 0:
        print(f"== {preset}: QAT, {args.qat_epochs} epochs", flush=True)
        keras.utils.set_random_seed(args.seed)
        start = time.time()
        tuned = qat.quantization_aware_finetune(model, x_train, y_train, epochs=args.qat_epochs,
                                                learning_rate=args.qat_learning_rate, verbose=2)
        qat_seconds = time.time() - start
        deploy_qat = os.path.join(work, f"{preset}_qat")
        manifest_qat = export.export_cascade(tuned, deploy_qat, calibration,
                                             threshold=args.threshold)
        # Parity against the *original* float model: what matters is how far the
        # deployed int8 cascade is from the model that was trained.
        result["qat"] = {"epochs": args.qat_epochs, "learning_rate": args.qat_learning_rate,
                         "finetune_seconds": qat_seconds, **_sizes(manifest_qat)}
        tuned_p = egt.metrics.exit_probabilities(tuned, x_test)
        tuned_labels, tuned_exits = egt.Cascade(tuned, threshold=args.threshold).predict(x_test)
        result["qat"].update(_evaluate_export(
            deploy_qat, p_float, float_labels, float_exits, x_test, y_test, tflm_rows,
            args.threshold, reference=(tuned_p, tuned_labels, tuned_exits)))
        result["qat"]["finetuned_float_cascade_accuracy"] = float(np.mean(tuned_labels == y_test))
    return result


def _markdown(results):
    lines = []
    for r in results["presets"].values():
        ptq = r["ptq"]
        lines += [
            f"### {r['preset']} widths {tuple(r['widths'])} "
            f"({'trained here, ' + str(r['epochs']) + ' epochs' if r['epochs'] else r['model_source']})",
            "",
            "| segment | flash bytes | TFLM arena bytes | MACs | threshold_int8 | int8 top-1 agreement (LiteRT) | float acc | int8 acc (LiteRT) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for k, (s, e) in enumerate(zip(ptq["segments"], ptq["litert"]["per_exit"]), start=1):
            lines.append(
                f"| {k} | {s['flash_bytes']:,} | {s['arena_bytes']:,} | {s['macs']:,} | "
                f"{'-' if s['threshold_int8'] is None else s['threshold_int8']} | "
                f"{100 * e['top1_agreement']:.2f}% | {100 * e['float_accuracy']:.2f}% | "
                f"{100 * e['int8_accuracy']:.2f}% |")
        lines += [
            "",
            f"Total flash {ptq['flash_total_bytes'] / KIB:.1f} KiB, largest TFLM arena "
            f"{ptq['arena_max_bytes'] / KIB:.1f} KiB: "
            f"{'fits' if ptq['fits_mcu_budget'] else 'does NOT fit'} the MCU budget "
            "(≤ 256 KiB flash, ≤ 64 KiB arena).",
            "",
            "| cascade (threshold {:g}) | samples | accuracy | float accuracy | label agreement | exit agreement | differing exits: max, median float margin to threshold | exit shares (%) |".format(results["settings"]["threshold"]),
            "|---|---:|---:|---:|---:|---:|---|---|",
        ]
        for name in ("ptq", "qat"):
            if name not in r:
                continue
            for runtime in ("litert", "tflm"):
                p = r[name][runtime]
                lines.append(
                    f"| {name.upper()} int8, {runtime} | {p['samples']} | {100 * p['accuracy']:.2f}% | "
                    f"{100 * p['float_accuracy']:.2f}% | {100 * p['label_agreement']:.2f}% | "
                    f"{100 * p['exit_agreement']:.2f}% | {p['exit_disagreements']}: "
                    f"{p['exit_disagreement_margin_max']:.3f}, {p['exit_disagreement_margin_median']:.3f} | "
                    + " / ".join(f"{100 * s:.1f}" for s in p["exit_shares"]) + " |")
        near = r["float"].get("near_threshold")
        if near:
            errors = [e["mean_abs_confidence_error"] for e in ptq["litert"]["per_exit"][:4]
                      if "mean_abs_confidence_error" in e]
            lines += [
                "",
                "Float confidence within 1 / 2 / 4 int8 steps (1/256) of the threshold at an exit the "
                "float cascade consults: " + " / ".join(f"{100 * v:.1f}%" for v in near.values())
                + " of the test samples; an int8 error of that size can move their exit"
                + (" (mean int8 confidence error at exits 1-4, PTQ: "
                   + " / ".join(f"{e / INT8_STEP:.1f}" for e in errors) + " steps)" if errors else "")
                + ".",
            ]
        t = r["timing_tflm"]
        lines += [
            "",
            f"TFLM interpreter (host, batch 1, {t['samples']} samples, mean (median)): cascade "
            f"{t['cascade_ms']:.2f} ({t['median_ms']['cascade']:.2f}) ms/sample, all five segments "
            f"{t['all_segments_ms']:.2f} ({t['median_ms']['all_segments']:.2f}) ms, "
            f"int8 model without early exit {t['final_only_ms']:.2f} "
            f"({t['median_ms']['final_only']:.2f}) ms: speedup "
            f"{t['speedup_time_vs_final_only']:.2f}x in time, "
            f"{t['speedup_macs_vs_final_only']:.2f}x in MACs "
            f"({t['cascade_macs']:,.0f} vs {t['final_only_macs']:,}).",
        ]
        if "qat" in r:
            lp = r["float"]["cascade_accuracy"] - r["ptq"]["litert"]["accuracy"]
            lq = r["float"]["cascade_accuracy"] - r["qat"]["litert"]["accuracy"]
            lines += [
                "",
                f"PTQ vs QAT ({r['qat']['epochs']} epochs): int8 accuracy loss vs the float "
                f"cascade {100 * lp:+.2f} vs {100 * lq:+.2f} points (LiteRT, full test set); "
                f"the fine-tuned float model itself: "
                f"{100 * r['qat']['finetuned_float_cascade_accuracy']:.2f}%. "
                + ("QAT reduces the loss." if lq < lp else "QAT does not reduce the loss here."),
                "",
                "QAT int8 vs the fine-tuned float model's own cascade (LiteRT): labels "
                f"{100 * r['qat']['litert']['vs_finetuned_float']['label_agreement']:.2f}%, exits "
                f"{100 * r['qat']['litert']['vs_finetuned_float']['exit_agreement']:.2f}% "
                f"(PTQ int8 vs its float model: {100 * r['ptq']['litert']['label_agreement']:.2f}%, "
                f"{100 * r['ptq']['litert']['exit_agreement']:.2f}%).",
            ]
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["micro", "paper"],
                        choices=["micro", "paper"])
    parser.add_argument("--epochs", type=int, default=30, help="training epochs (default 30)")
    parser.add_argument("--lam", type=float, default=0.3, help="λ of the trained models")
    parser.add_argument("--model-micro", default=None,
                        help="use this trained micro model (.keras, or .weights.h5 with a .json config beside it)")
    parser.add_argument("--model-paper", default=None,
                        help="use this trained paper model (.keras, or .weights.h5 with a .json config beside it)")
    parser.add_argument("--save-models", default=None, help="save trained models into this folder")
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--num-calibration", type=int, default=256)
    parser.add_argument("--tflm-samples", type=int, default=0,
                        help="test samples run on TFLM (default: all; paper widths take ~0.4 s "
                        "per sample on TFLM's reference kernels)")
    parser.add_argument("--timing-samples", type=int, default=200)
    parser.add_argument("--qat-epochs", type=int, default=3, help="0 skips QAT")
    parser.add_argument("--qat-learning-rate", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-train", type=int, default=defaults.NUM_TRAIN)
    parser.add_argument("--num-test", type=int, default=defaults.NUM_TEST)
    parser.add_argument("--keep", default=None, help="copy the deploy folders here")
    parser.add_argument("--output", default=RESULTS)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: micro only, 2 epochs, small data, 1 QAT epoch")
    args = parser.parse_args(argv)
    if args.quick:
        args.presets, args.epochs, args.num_train, args.num_test = ["micro"], 2, 200, 100
        args.num_calibration, args.timing_samples, args.qat_epochs = 32, 20, 1
        if args.output == RESULTS:
            args.output = os.path.join(HERE, "results", "deploy_quick.json")

    import keras

    if keras.backend.backend() != "tensorflow":
        sys.exit("benchmarks/deploy.py needs KERAS_BACKEND=tensorflow (export and QAT).")
    from keras_egt.datasets import radar_gestures

    started = time.time()
    data = radar_gestures.load_data(num_train=args.num_train, num_test=args.num_test)
    results = {
        "machine": _common.machine(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("output",)},
        "presets": {},
    }
    with tempfile.TemporaryDirectory(prefix="keras_egt_deploy_bench_") as work:
        for preset in args.presets:
            results["presets"][preset] = run_preset(preset, args, data, work)
        if args.keep:
            for name in os.listdir(work):
                shutil.copytree(os.path.join(work, name), os.path.join(args.keep, name),
                                dirs_exist_ok=True)
    results["seconds"] = time.time() - started
    results["markdown"] = _markdown(results)
    _common.write_json(args.output, results)
    print(results["markdown"])
    print(f"Wrote {args.output} ({results['seconds'] / 60:.1f} min).")


if __name__ == "__main__":
    main()
