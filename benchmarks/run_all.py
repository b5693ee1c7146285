"""Runs every benchmark and writes benchmarks/RESULTS.md.

    python benchmarks/run_all.py            # everything (hours on a 2-core CPU)
    python benchmarks/run_all.py --quick    # smoke run of every script
    python benchmarks/run_all.py --report   # only rewrite RESULTS.md from results/*.json

Each benchmark writes its own JSON under benchmarks/results/; RESULTS.md is made
from those files alone, so a figure in it is always one that a script measured.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")

# (script, full arguments, quick arguments)
BENCHMARKS = [
    ("benchmarks/train_step.py", ["--all-backends"], ["--all-backends", "--quick"]),
    ("benchmarks/datasets.py", [], ["--quick"]),
    ("benchmarks/cascade.py", [], ["--quick"]),
    ("benchmarks/deploy.py", [], ["--quick"]),
    ("benchmarks/reproduce.py", [], ["--quick"]),
]


def _load(name):
    path = os.path.join(RESULTS, f"{name}.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _versions():
    versions = {}
    for module in ["keras", "numpy", "tensorflow", "jax", "torch", "keras_tuner", "ai_edge_litert"]:
        try:
            versions[module] = __import__(module).__version__
        except Exception:
            versions[module] = "not installed"
    return versions


def _section_train_step(lines):
    data = _load("train_step")
    if not data:
        return
    lines += [
        "## Training-step overhead (benchmarks/train_step.py)",
        "",
        "Seconds per training step, paper widths, batch 32, 64x64x2 inputs, measured side by side "
        "in one process per backend (median of interleaved rounds). Target: EGT / λ=0 ≤ 1.10.",
        "",
        "| backend | EGT λ=0.3 (ms) | λ=0 (ms) | plain CNN (ms) | EGT / λ=0 | EGT / plain |",
        "|---|---|---|---|---|---|",
    ]
    for backend, r in data.items():
        s = r["seconds_per_step"]
        lines.append(
            f"| {backend} | {1e3 * s['egt_lambda_0.3']:.0f} | {1e3 * s['lambda_0']:.0f} | "
            f"{1e3 * s['plain_cnn']:.0f} | {r['egt_over_lambda0']:.3f} | {r['egt_over_plain']:.3f} |"
        )
    lines.append("")


def _section_generic(lines, name, title, preamble=""):
    data = _load(name)
    if not data:
        return
    lines += [f"## {title}", ""]
    if preamble:
        lines += [preamble, ""]
    markdown = data.get("markdown") if isinstance(data, dict) else None
    if markdown:
        lines += [markdown, ""]
    lines += [f"Every figure, with the machine and settings: `benchmarks/results/{name}.json`.", ""]


def write_report(path=os.path.join(HERE, "RESULTS.md")):
    """Writes RESULTS.md from benchmarks/results/*.json."""
    lines = [
        "# keras-egt benchmark results",
        "",
        f"Written {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC} by "
        "`benchmarks/run_all.py` from `benchmarks/results/*.json`.",
        f"Machine: {platform.platform()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in _versions().items()) + ".",
        "Each JSON file records the machine it was measured on (some were run on a GPU machine).",
        "",
    ]
    _section_train_step(lines)
    _section_generic(lines, "reproduction", "Paper reproduction: Table I and Table II (benchmarks/reproduce.py)")
    _section_generic(lines, "cascade", "Cascade speedup vs the oracle bound (benchmarks/cascade.py)")
    _section_generic(lines, "deploy", "Deployment: int8 split cascade on LiteRT and TFLM (benchmarks/deploy.py)")
    _section_generic(lines, "datasets", "Built-in radar data (benchmarks/datasets.py)")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(lines))
    os.replace(tmp, path)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke-run every benchmark with tiny settings")
    parser.add_argument("--report", action="store_true", help="only rewrite RESULTS.md")
    parser.add_argument("--only", nargs="*", help="script names to run, e.g. cascade deploy")
    args = parser.parse_args(argv)
    if not args.report:
        for script, full, quick in BENCHMARKS:
            name = os.path.splitext(os.path.basename(script))[0]
            if args.only and name not in args.only:
                continue
            command = [sys.executable, os.path.join(ROOT, script), *(quick if args.quick else full)]
            print("$", " ".join(command), flush=True)
            subprocess.run(command, check=True, cwd=ROOT)
    print("Wrote", write_report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
