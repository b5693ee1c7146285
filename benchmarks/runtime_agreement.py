"""Why TFLM and LiteRT disagree on one deploy folder: per segment, per kernel set.

    python benchmarks/runtime_agreement.py DEPLOY_DIR [--samples 40] [--output PATH]

Every segment gets the same int8 inputs on each runtime (segment k's inputs are
TFLM's int8 features of segment k-1, so no difference is carried over), and the
int8 outputs (probabilities and features) are compared with TFLM's:

* `litert_auto`: LiteRT as `load_cascade(runtime="litert")` runs it (default op
  resolver: optimized kernels with the XNNPACK delegate);
* `litert_builtin`: optimized kernels, no default delegate (no XNNPACK);
* `litert_ref`: TFLite's reference kernels (`OpResolverType.BUILTIN_REF`), the
  code TFLM's kernels derive from.

For the ops, LiteRT's intermediate tensors (`experimental_preserve_all_tensors`)
of `litert_builtin` and `litert_ref` are compared tensor by tensor; the first
tensor that differs names the op whose kernels round differently. Also times each
mode per sample. Writes benchmarks/results/runtime_agreement.json.
"""

import argparse
import json
import os
import time

import numpy as np
from ai_edge_litert import interpreter as litert
from tflite_micro.python.tflite_micro import runtime as tflm

MODES = {
    "litert_auto": litert.OpResolverType.AUTO,
    "litert_builtin": litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    "litert_ref": litert.OpResolverType.BUILTIN_REF,
}


def _outputs_litert(interp):
    return [interp.get_tensor(d["index"]) for d in interp.get_output_details()]


def _run_litert(data, mode, inputs, preserve=False):
    interp = litert.Interpreter(model_content=data, experimental_op_resolver_type=MODES[mode],
                                experimental_preserve_all_tensors=preserve, num_threads=1)
    interp.allocate_tensors()
    index = interp.get_input_details()[0]["index"]
    outs, tensors, seconds = [], [], 0.0
    for q in inputs:
        interp.set_tensor(index, q)
        start = time.perf_counter()
        interp.invoke()
        seconds += time.perf_counter() - start
        outs.append([o.copy() for o in _outputs_litert(interp)])
        if preserve:
            tensors.append({d["name"]: interp.get_tensor(d["index"]).copy()
                            for d in interp.get_tensor_details()
                            if d["dtype"] == np.int8 and d["name"]})
    return outs, tensors, seconds / len(inputs), interp


def _run_tflm(data, arena, inputs, num_outputs):
    interp = tflm.Interpreter.from_bytes(data, arena_size=arena)
    outs, seconds = [], 0.0
    for q in inputs:
        interp.set_input(q, 0)
        start = time.perf_counter()
        interp.invoke()
        seconds += time.perf_counter() - start
        outs.append([np.array(interp.get_output(i)) for i in range(num_outputs)])
    return outs, seconds / len(inputs)


def _ops_by_output(interp):
    """tensor index -> op name, from LiteRT's op details."""
    ops = {}
    for op in interp._get_ops_details():
        for t in op["outputs"]:
            ops[int(t)] = op["op_name"]
    return ops


def _cascade_agreement(deploy_dir, manifest, first, args):
    """The whole chain (differences carried over), decisions as the cascade takes them."""
    from keras_egt.export.runtime import decide_int8

    rng = np.random.default_rng(args.seed + 1)
    h0 = [np.clip(rng.normal(first["zero_point"], 40, size=first["shape"]), -128, 127)
          .astype(np.int8) for _ in range(args.samples)]
    thresholds = [s["threshold_int8"] for s in manifest["segments"][:-1]]
    results = {}
    for mode in ["tflm"] + list(MODES):
        h, probs = h0, []
        for seg in manifest["segments"]:
            with open(os.path.join(deploy_dir, seg["file"]), "rb") as f:
                data = f.read()
            num_outputs = 1 if seg["features"] is None else 2
            if mode == "tflm":
                outs, _ = _run_tflm(data, seg["arena_bytes"], h, num_outputs)
            else:
                outs, _, _, _ = _run_litert(data, mode, h)
            probs.append(np.stack([o[seg["probabilities"]["output_index"]][0] for o in outs]))
            if seg["features"] is not None:
                h = [o[seg["features"]["output_index"]] for o in outs]
        results[mode] = decide_int8(np.stack(probs), thresholds)
    labels, exits = results["tflm"]
    return {mode: {"labels_agree_with_tflm": float(np.mean(l == labels)),
                   "exits_agree_with_tflm": float(np.mean(e == exits))}
            for mode, (l, e) in results.items() if mode != "tflm"}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("deploy_dir")
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results",
                                                         "runtime_agreement.json"))
    args = parser.parse_args()
    with open(os.path.join(args.deploy_dir, "manifest.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    segments = manifest["segments"]
    first = segments[0]["input"]
    rng = np.random.default_rng(args.seed)
    # Inputs spread over the whole int8 range of segment 1 (a kernel comparison needs
    # no real data; these exercise saturation as well as the middle).
    h = [np.clip(rng.normal(first["zero_point"], 40, size=first["shape"]), -128, 127)
         .astype(np.int8) for _ in range(args.samples)]
    report = {"deploy_dir": os.path.abspath(args.deploy_dir), "samples": args.samples,
              "segments": []}
    for seg in segments:
        with open(os.path.join(args.deploy_dir, seg["file"]), "rb") as f:
            data = f.read()
        num_outputs = 1 if seg["features"] is None else 2
        ref_outs, ref_seconds = _run_tflm(data, seg["arena_bytes"], h, num_outputs)
        p = seg["probabilities"]["output_index"]
        entry = {"index": seg["index"], "ops": seg["ops"], "tflm_ms": 1000 * ref_seconds}
        tensors = {}
        for mode in MODES:
            outs, preserved, seconds, interp = _run_litert(data, mode, h, preserve=mode != "litert_auto")
            tensors[mode] = (preserved, interp)
            prob_diff = np.array([np.abs(o[p].astype(int) - r[p].astype(int)).max()
                                  for o, r in zip(outs, ref_outs)])
            argmax_same = np.mean([o[p].argmax() == r[p].argmax() for o, r in zip(outs, ref_outs)])
            row = {"ms": 1000 * seconds,
                   "probabilities_max_abs_diff": int(prob_diff.max()),
                   "probabilities_samples_differing": float(np.mean(prob_diff > 0)),
                   "argmax_agreement": float(argmax_same)}
            if seg["features"] is not None:
                f = seg["features"]["output_index"]
                diffs = [np.abs(o[f].astype(int) - r[f].astype(int)) for o, r in zip(outs, ref_outs)]
                row["features_max_abs_diff"] = int(max(d.max() for d in diffs))
                row["features_elements_differing"] = float(np.mean([np.mean(d > 0) for d in diffs]))
            entry[mode] = row
        # Which op: an op whose int8 inputs are equal under optimized (no XNNPACK) and
        # reference kernels but whose output differs is one whose kernels round differently.
        (fast, interp), (ref, _) = tensors["litert_builtin"], tensors["litert_ref"]
        names = {d["index"]: d["name"] for d in interp.get_tensor_details()}
        differing = {}
        for a, b in zip(fast, ref):
            for op in interp._get_ops_details():
                ins = [names.get(int(t)) for t in op["inputs"] if int(t) >= 0]
                outs = [names.get(int(t)) for t in op["outputs"]]
                if not all(n in a and n in b for n in outs):
                    continue
                same_in = all(np.array_equal(a[n], b[n]) for n in ins if n in a and n in b)
                d = max(int(np.abs(a[n].astype(int) - b[n].astype(int)).max()) for n in outs)
                if same_in and d:
                    differing[op["op_name"]] = max(differing.get(op["op_name"], 0), d)
        entry["ops_differing_optimized_vs_reference"] = differing
        report["segments"].append(entry)
        # The next segment gets TFLM's features: differences are not carried over.
        if seg["features"] is not None:
            h = [o[seg["features"]["output_index"]] for o in ref_outs]
    report["cascade"] = _cascade_agreement(args.deploy_dir, manifest, first, args)
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
