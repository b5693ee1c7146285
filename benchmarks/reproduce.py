"""The paper reproduction: baseline and EGT λ ∈ {0.1 … 0.5}, paper settings, Tables I and II.

Paper widths, 50 epochs, Adam 1e-3 halved every 15 epochs, batch 32, on the
built-in radar set (1,363 train / 1,364 test, unseen test users). Every model is
evaluated on the test set with the paper's threshold 0.9; results go to
benchmarks/results/reproduction.json, with the tables in the paper's layout.

    python benchmarks/reproduce.py                   # the full run (a GPU helps)
    python benchmarks/reproduce.py --quick           # tiny smoke run
    python benchmarks/reproduce.py --save-models DIR --keep 0,0.3
    python benchmarks/reproduce.py --resume          # go on with an interrupted sweep
    python benchmarks/reproduce.py --table-i-plus --widths micro   # Table I+ (below)

**Table I+** (`--table-i-plus`, results/table_i_plus.json): the baseline, EGT at
each λ of `--lambdas`, hierarchical EGT (exit k vs k+1), EGT with one λ per early
exit, and Attention Transfer (Zagoruyko & Komodakis 2017), each trained alike and
measured with `evaluate` (consistency, chance floor, chance-corrected consistency,
accuracy, MAC speedup) and `explanation_quality` (deletion / insertion AUC per exit
against random order, randomisation-check correlation) on `--quality-samples` test
samples.
"""

import argparse
import json
import os
import sys
import time

import _common

from keras_egt import defaults

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "reproduction.json")
TABLE_I_PLUS = os.path.join(HERE, "results", "table_i_plus.json")
# Table I+ targets: the paper's headline gain, on the chance-corrected figure.
CORRECTED_GAIN_PCT = 18.5
MAX_DELETION_LOSS = 0.02

# Table I and II of the paper, for side-by-side reading.
PAPER = {
    "table_1": {
        "Baseline": [0.769, 0.736, 0.786, 0.482, 0.693, 98.97],
        "EGT (λ = 0.1)": [0.797, 0.817, 0.819, 0.814, 0.812, 97.73],
        "EGT (λ = 0.2)": [0.751, 0.787, 0.79, 0.786, 0.778, 98.39],
        "EGT (λ = 0.3)": [0.802, 0.826, 0.829, 0.828, 0.821, 98.46],
        "EGT (λ = 0.4)": [0.79, 0.838, 0.844, 0.778, 0.813, 98.97],
        "EGT (λ = 0.5)": [0.7, 0.793, 0.795, 0.783, 0.768, 97.8],
    },
    "table_2": {"with_early_exit": [1.83, 97.8], "without_early_exit": [3.6, 99.56]},
}


def _name(lam):
    return "Baseline" if lam == 0 else f"EGT (λ = {lam:g})"


def run(args):
    import keras

    import keras_egt as egt
    from keras_egt.datasets import radar_gestures
    from keras_egt.evaluation import Report, evaluate

    (x_train, y_train), (x_test, y_test) = radar_gestures.load_data(
        num_train=args.num_train, num_test=args.num_test
    )
    widths = args.widths if args.widths in egt.WIDTH_PRESETS else egt.cnn.resolve_widths(args.widths)
    settings = {"widths": widths, "epochs": args.epochs, "batch_size": args.batch_size,
                "step_every": args.step_every, "learning_rate": 1e-3, "threshold": args.threshold,
                "seed": args.seed, "num_train": len(x_train), "num_test": len(x_test)}
    reports, histories, train_seconds, result = {}, {}, {}, None
    previous = _previous(args.output, settings) if args.resume else {}
    # Every kept model goes in before any training, so that the file written after
    # each new model still holds them all.
    for name in map(_name, args.lambdas):
        if name in previous.get("reports", {}):
            print(f"=== {name}: kept from {args.output}", flush=True)
            reports[name] = Report.from_dict(previous["reports"][name])
            histories[name] = previous["histories"][name]
            train_seconds[name] = previous["train_seconds"][name]
    for lam in args.lambdas:
        name = _name(lam)
        if name in reports:
            continue
        print(f"=== {name}: widths {widths}, {args.epochs} epochs", flush=True)
        keras.utils.set_random_seed(args.seed)
        model = egt.EarlyExitCNN(
            radar_gestures.NUM_CLASSES, x_train.shape[1:], widths=widths, consistency_weight=lam
        )
        start = time.time()
        history = egt.recipe.fit(model, x_train, y_train, epochs=args.epochs,
                                 batch_size=args.batch_size, decay_every=args.step_every,
                                 verbose=2)
        train_seconds[name] = time.time() - start
        histories[name] = {k: [float(v) for v in vs] for k, vs in history.history.items()}
        reports[name] = evaluate(model, x_test, y_test, threshold=args.threshold, timing=args.timing)
        print(reports[name].to_markdown(), flush=True)
        if args.save_models and any(abs(lam - k) < 1e-9 for k in args.keep):
            # Weights and config rather than a .keras file: no optimizer state, so
            # the paper-width model stays at ~17 MB.
            os.makedirs(args.save_models, exist_ok=True)
            stem = os.path.join(args.save_models, f"egt_lambda_{lam:g}")
            model.save_weights(stem + ".weights.h5")
            with open(stem + ".json", "w") as f:
                json.dump(model.get_config(), f)
        keras.backend.clear_session()
        # After every model: an interrupted sweep keeps what it finished (--resume).
        result = _write(args.output, keras.backend.backend(), settings, reports, histories, train_seconds)
    if result is None:  # every model was kept: the file already holds them
        with open(args.output) as f:
            result = json.load(f)
    print(result["markdown"])
    print("gains vs baseline:", json.dumps(result["gains_vs_baseline"], indent=1))
    print("Wrote", args.output)


def _previous(path, settings):
    """The earlier run at `path`, if any; refused if it was run with other settings."""
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        previous = json.load(f)
    ours = json.loads(json.dumps(settings))
    if previous.get("settings") != ours:
        raise SystemExit(
            f"{path} holds a run with other settings ({previous.get('settings')}, not {ours}): "
            "give another --output, or drop --resume to start afresh."
        )
    return previous


def _write(path, backend, settings, reports, histories, train_seconds):
    from keras_egt.evaluation import compare_markdown

    reports = dict(sorted(reports.items(), key=lambda item: item[1].consistency_weight))
    markdown = compare_markdown(reports)
    baseline = reports.get("Baseline")
    gains = {}
    if baseline is not None:
        base = baseline.to_dict()
        for name, report in reports.items():
            r = report.to_dict()
            gains[name] = {
                "consistency_gain_pct": 100 * (r["consistency_avg"] / base["consistency_avg"] - 1),
                "cascade_accuracy_delta_points": 100 * (r["accuracy"] - base["accuracy"]),
                "final_accuracy_delta_points": 100 * (r["final_accuracy"] - base["final_accuracy"]),
            }
    result = {
        "machine": _common.machine(backend=backend, device=_device()),
        "settings": settings,
        "train_seconds": train_seconds,
        "reports": {name: report.to_dict() for name, report in reports.items()},
        "gains_vs_baseline": gains,
        "histories": histories,
        "paper": PAPER,
        "markdown": markdown,
    }
    _common.write_json(path, result)
    return result


def _device():
    try:
        import jax

        return str(jax.devices()[0])
    except Exception:
        return "cpu"


def table_i_plus_variants(lambdas, variant_lambda):
    """(row name, EarlyExitCNN keyword arguments) of every Table I+ model."""
    rows = [(_name(lam), {"consistency_weight": lam}) for lam in [0.0, *[l for l in lambdas if l]]]
    lam = variant_lambda
    profile = [round(lam * (k + 1) / 2.5, 4) for k in range(4)]   # 0.3 -> 0.12 ... 0.48, mean 0.3
    rows += [
        (f"Hierarchical EGT (λ = {lam:g})", {"consistency_weight": lam, "consistency_target": "next"}),
        ("EGT, per-exit λ (" + ", ".join(f"{w:g}" for w in profile) + ")",
         {"consistency_weight": profile}),
        (f"Attention Transfer (λ = {lam:g})",
         {"consistency_weight": lam, "consistency_loss": "attention_transfer"}),
    ]
    return rows


def run_table_i_plus(args):
    import keras

    import keras_egt as egt
    from keras_egt.datasets import radar_gestures
    from keras_egt.evaluation import evaluate

    (x_train, y_train), (x_test, y_test) = radar_gestures.load_data(
        num_train=args.num_train, num_test=args.num_test
    )
    settings = {"widths": args.widths, "epochs": args.epochs, "batch_size": args.batch_size,
                "step_every": args.step_every, "learning_rate": 1e-3, "threshold": args.threshold,
                "seed": args.seed, "num_train": len(x_train), "num_test": len(x_test),
                "quality_samples": min(args.quality_samples, len(x_test)),
                "quality_steps": args.quality_steps}
    previous = _previous(args.output, settings) if args.resume else {}
    rows = dict(previous.get("rows", {}))
    nq = settings["quality_samples"]
    for name, options in table_i_plus_variants(args.lambdas, args.variant_lambda):
        if name in rows:
            print(f"=== {name}: kept from {args.output}", flush=True)
            continue
        print(f"=== {name}: {options}, widths {args.widths}, {args.epochs} epochs", flush=True)
        keras.utils.set_random_seed(args.seed)
        model = egt.EarlyExitCNN(radar_gestures.NUM_CLASSES, x_train.shape[1:], widths=args.widths,
                                 **options)
        start = time.time()
        egt.recipe.fit(model, x_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
                       decay_every=args.step_every, verbose=2)
        train_seconds = time.time() - start
        report = evaluate(model, x_test, y_test, threshold=args.threshold, timing=False, name=name)
        start = time.time()
        quality = egt.explanation_quality(model, x_test[:nq], y_test[:nq], steps=args.quality_steps,
                                          seed=args.seed)
        quality_seconds = time.time() - start
        print(report.to_markdown(), "\n", quality.to_markdown(), flush=True)
        rows[name] = {"options": options, "train_seconds": train_seconds,
                      "quality_seconds": quality_seconds, "report": report.to_dict(),
                      "quality": quality.to_dict()}
        keras.backend.clear_session()
        _write_table_i_plus(args.output, keras.backend.backend(), settings, rows)
    order = [name for name, _ in table_i_plus_variants(args.lambdas, args.variant_lambda)]
    rows = {name: rows[name] for name in sorted(rows, key=lambda n: order.index(n) if n in order else len(order))}
    result = _write_table_i_plus(args.output, keras.backend.backend(), settings, rows)
    print(result["markdown"])
    print("Wrote", args.output)


def table_i_plus_verdicts(rows):
    """Each non-baseline row against the Table I+ targets (see the module docstring)."""
    base = rows.get("Baseline")
    verdicts = {}
    if base is None:
        return verdicts
    b_corr = base["report"]["corrected_consistency_avg"]
    b_del = [e["deletion_auc"] for e in base["quality"]["exits"]]
    for name, row in rows.items():
        if name == "Baseline":
            continue
        exits = row["quality"]["exits"]
        corr = row["report"]["corrected_consistency_avg"]
        gain = 100 * (corr / b_corr - 1) if b_corr and b_corr > 0 else None
        worse = [e["deletion_auc"] - b for e, b in zip(exits, b_del)]
        beats_random = [e["deletion_auc"] < e["random_deletion_auc"] for e in exits]
        raw_gain = 100 * (row["report"]["consistency_avg"] / base["report"]["consistency_avg"] - 1)
        verdicts[name] = {
            "raw_consistency_gain_pct": raw_gain,
            "corrected_consistency_gain_pct": gain,
            "corrected_gain_met": gain is not None and gain >= CORRECTED_GAIN_PCT,
            "deletion_auc_minus_baseline": worse,
            "deletion_no_worse_met": all(w <= MAX_DELETION_LOSS for w in worse),
            "deletion_beats_random": beats_random,
            "deletion_beats_random_met": all(beats_random),
        }
        verdicts[name]["all_met"] = (verdicts[name]["corrected_gain_met"]
                                     and verdicts[name]["deletion_no_worse_met"]
                                     and verdicts[name]["deletion_beats_random_met"])
    return verdicts


def table_i_plus_markdown(rows):
    """The Table I+ tables: consistency figures, then per-exit deletion / insertion."""
    def f(v, d=3):
        return "–" if v is None else f"{v:.{d}f}"

    lines = [
        "| Model | Avg consistency | Chance floor | Corrected | Acc. (%) | MAC speedup "
        "| Randomisation ρ (exits) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        r, q = row["report"], row["quality"]
        lines.append(
            f"| {name} | {f(r['consistency_avg'])} | {f(r['chance_consistency_avg'])} | "
            f"{f(r.get('corrected_consistency_avg'))} | {100 * r['accuracy']:.2f} | "
            f"{r['mac_speedup']:.2f}x | "
            + ", ".join(f(e["randomisation_correlation"], 2) for e in q["exits"]) + " |"
        )
    num_exits = max(len(row["quality"]["exits"]) for row in rows.values())
    header = " | ".join(f"Exit {k + 1}" for k in range(num_exits))
    lines += ["", "Deletion AUC, attention order / random order (lower is better):", "",
              f"| Model | {header} |", "|---|" + "---|" * num_exits]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(
            f"{f(e['deletion_auc'])} / {f(e['random_deletion_auc'])}" for e in row["quality"]["exits"])
            + " |")
    lines += ["", "Insertion AUC, attention order / random order (higher is better):", "",
              f"| Model | {header} |", "|---|" + "---|" * num_exits]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(
            f"{f(e['insertion_auc'])} / {f(e['random_insertion_auc'])}" for e in row["quality"]["exits"])
            + " |")
    return "\n".join(lines)


def _write_table_i_plus(path, backend, settings, rows):
    result = {
        "machine": _common.machine(backend=backend, device=_device()),
        "settings": settings,
        "targets": {"corrected_gain_pct": CORRECTED_GAIN_PCT, "max_deletion_loss": MAX_DELETION_LOSS},
        "rows": rows,
        "verdicts": table_i_plus_verdicts(rows),
        "markdown": table_i_plus_markdown(rows),
    }
    _common.write_json(path, result)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="paper")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--step-every", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lambdas", default="0,0.1,0.2,0.3,0.4,0.5")
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-train", type=int, default=defaults.NUM_TRAIN)
    parser.add_argument("--num-test", type=int, default=defaults.NUM_TEST)
    parser.add_argument("--timing", action="store_true", help="also time batch-1 inference (meaningful on the target CPU only)")
    parser.add_argument("--save-models", help="folder to save the models whose λ is in --keep")
    parser.add_argument("--keep", default="0,0.3", help="λ values whose models --save-models keeps")
    parser.add_argument("--output", default=RESULTS)
    parser.add_argument("--resume", action="store_true",
                        help="keep the models --output already holds (same settings) and train the rest")
    parser.add_argument("--quick", action="store_true", help="micro widths, 2 epochs, 2 λ, 180/180 samples")
    parser.add_argument("--table-i-plus", action="store_true",
                        help="Table I+: EGT variants and explanation quality (results/table_i_plus.json)")
    parser.add_argument("--variant-lambda", type=float, default=0.3,
                        help="λ of the hierarchical, per-exit (mean) and Attention Transfer rows")
    parser.add_argument("--quality-samples", type=int, default=500)
    parser.add_argument("--quality-steps", type=int, default=20)
    args = parser.parse_args(argv)
    if args.table_i_plus:
        if args.output == RESULTS:
            args.output = TABLE_I_PLUS
        if args.quick:
            args.widths, args.epochs, args.lambdas, args.num_train, args.num_test = "micro", 1, "0,0.3", 120, 60
            args.quality_samples, args.quality_steps = 20, 4
            args.output = os.path.join(HERE, "results", "table_i_plus_quick.json")
        args.lambdas = [float(v) for v in args.lambdas.split(",")]
        run_table_i_plus(args)
        return 0
    if args.quick:
        args.widths, args.epochs, args.lambdas, args.num_train, args.num_test = "micro", 2, "0,0.3", 180, 180
        args.output = os.path.join(HERE, "results", "reproduction_quick.json")
    args.lambdas = [float(v) for v in args.lambdas.split(",")]
    args.keep = [float(v) for v in args.keep.split(",")]
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
