"""Table II on an emulated Cortex-M4: the int8 cascade as TFLM + CMSIS-NN firmware.

For each preset: train an EGT model (λ = 0.3) on the built-in radar set (or load one
with --model-micro / --model-paper), export it (PTQ, 256 calibration samples, threshold
0.9), and run `keras_egt.export.firmware.run_firmware` on the first --samples radar test
samples: the firmware under qemu-system-arm -M mps2-an386, bit-exact against TFLM's
Python interpreter. Reported: instructions per sample with and without early exit, the
speedup, the estimated time at 64 MHz (an instruction-count estimate), and the
full-image flash and RAM against the nRF52840 (1 MB flash, 256 KB RAM).

    KERAS_EGT_CACHE_DIR=... python benchmarks/firmware.py                 # micro, 200 samples
    python benchmarks/firmware.py --presets micro paper --paper-samples 16
    python benchmarks/firmware.py --quick                                 # smoke run
    python benchmarks/firmware.py --build          # build time + set-up cost, MCU preset

`--build` measures, side by side in one run, the cold build of the TFLM library for the
MCU preset's cascade (`EarlyExitMCU`, exported untrained: the op set and the per-segment
instruction counts do not depend on the weights): the selective build of
`keras_egt.export.tflm_build` (core + the cascade's kernels, a fresh cache) against the
full `microlite` library of TFLM's Makefile (what keras-egt built before, `make -j<cpus>`
in a copy of the tree); then the firmware's per-sample set-up cost with one interpreter
per segment allocated at boot against the shared arena (an interpreter and
AllocateTensors per segment per sample), with both designs' arena RAM.

Writes benchmarks/results/firmware.json (with a markdown summary; `--build` adds its
`build` section and keeps the presets already there).
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

from keras_egt import atomic as egt_atomic

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
RESULTS = os.path.join(HERE, "results", "firmware.json")
KIB = 1024
NRF52840_FLASH, NRF52840_RAM = 1024 * KIB, 256 * KIB


def run_preset(preset, args, data, work):
    import deploy as deploy_bench  # benchmarks/deploy.py: the same training recipe
    import numpy as np

    from keras_egt import export
    from keras_egt.export import firmware

    (x_train, y_train), (x_test, y_test) = data
    model_path = getattr(args, f"model_{preset}")
    epochs = args.epochs if preset == "micro" else args.paper_epochs
    if model_path:
        print(f"== {preset}: loading {model_path}", flush=True)
        model, seconds = deploy_bench._load(model_path), None
    elif epochs == 0:  # sizes and instruction counts only: they do not depend on the weights
        import keras

        import keras_egt as egt

        print(f"== {preset}: untrained (random weights)", flush=True)
        keras.utils.set_random_seed(args.seed)
        model = egt.EarlyExitCNN(9, x_train.shape[1:], widths=preset)
        model(x_train[:1])
        seconds = None
    else:
        print(f"== {preset}: training {epochs} epochs (λ = {args.lam})", flush=True)
        model, seconds = deploy_bench._train(preset, x_train, y_train, epochs, args.seed, args.lam)
    rng = np.random.default_rng(args.seed)
    calibration = x_train[np.sort(rng.choice(len(x_train), min(256, len(x_train)), replace=False))]
    folder = os.path.join(work, preset)
    manifest = export.export_cascade(model, folder, calibration, threshold=args.threshold)
    samples = args.samples if preset == "micro" else args.paper_samples
    x = x_test[:samples]
    report = firmware.run_firmware(folder, x, output=False, verbose=True)
    labels = np.array(report["labels"])
    print(firmware.format_firmware_report(report), flush=True)
    return {
        "preset": preset,
        "widths": list(model.widths),
        "model_source": model_path or (f"trained here, {epochs} epochs" if epochs else
                                       "untrained: sizes and instructions per segment only; "
                                       "exits and accuracy are not meaningful"),
        "train_seconds": seconds,
        "model_flash_bytes": sum(s["flash_bytes"] for s in manifest["segments"]),
        "host_arena_bytes": max(s["arena_bytes"] for s in manifest["segments"]),
        "accuracy": float(np.mean(labels == y_test[:samples])),
        "fits_nrf52840": report["flash_bytes"] <= NRF52840_FLASH and report["ram_bytes"] <= NRF52840_RAM,
        "firmware": {k: v for k, v in report.items()
                     if k not in ("labels", "exits", "confidences_int8", "final_only_labels",
                                  "instructions_per_sample", "deploy_dir")},
    }


def markdown(results):
    """The RESULTS.md section (also in the JSON)."""
    lines = [
        "Emulated MPS2 AN386 (Cortex-M4, `qemu-system-arm -icount`), TFLM + CMSIS-NN, one "
        "interpreter per segment allocated once at boot; instructions counted by the emulated clock (see tflite/README.md section 9). "
        "Time at 64 MHz is an instruction-count estimate (1 instruction = 1 cycle), not "
        "cycle-accurate. Flash and RAM are the whole image from the linker (model + TFLM "
        "runtime + kit + harness code + C library; RAM = data + bss + arena + heap + peak "
        "stack), against the nRF52840's 1 MB flash and 256 KB RAM.",
        "",
        "| preset | samples | bit-exact vs TFLM Python | accuracy | instructions/sample, early exit | final exit only | speedup | est. ms at 64 MHz (exit / final) | flash (model / TFLM) | RAM (arena) | fits nRF52840 |",
        "|---|---:|---|---:|---:|---:|---:|---|---|---|---|",
    ]
    for r in results["presets"].values():
        f = r["firmware"]
        est = f["estimated_ms_at_64mhz"]
        where = "" if f["model_region"] == "flash" else " (model in PSRAM: over the 4 MB code memory)"
        accuracy = ("– (untrained)" if r["model_source"].startswith("untrained")
                    else f"{100 * r['accuracy']:.1f}%")
        lines.append(
            f"| {r['preset']} {tuple(r['widths'])} | {f['samples']} | {'yes' if f['bit_exact'] else 'NO'} | "
            f"{accuracy} | {f['instructions_with_early_exit']:,} | "
            f"{f['instructions_final_only']:,} | {f['speedup']:.2f}x | "
            f"{est['with_early_exit']:.1f} / {est['final_only']:.1f} | "
            f"{f['flash_bytes'] / KIB:,.1f} KiB ({f['flash_split']['model'] / KIB:,.1f} / "
            f"{f['flash_split']['tflm'] / KIB:,.1f}){where} | {f['ram_bytes'] / KIB:,.1f} KiB "
            f"({f['ram_split']['arena'] / KIB:,.1f}) | {'yes' if r['fits_nrf52840'] else 'NO'} |")
    for r in results["presets"].values():
        f = r["firmware"]
        lines += [
            "",
            f"{r['preset']} ({r['model_source']}): exit counts {f['exit_counts']}; instructions per "
            "segment " + ", ".join(f"{v:,}" for v in f["instructions_per_segment"])
            + " (of which set-up and copies: "
            + ", ".join(f"{v:,}" for v in f["setup_instructions_per_segment"]) + "); arena per "
            f"segment on the target {f['arena_bytes_per_segment_target']} vs host "
            f"{f['arena_bytes_per_segment_host']} bytes; peak stack {f['ram_split']['stack']:,} B.",
        ]
    return "\n".join(lines)


def _children_cpu_seconds():
    """User + system CPU seconds of this process's finished children (the compilers):
    unlike wall time, hardly changed by other work sharing the cores."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _full_library_seconds(tflm, gcc, work):
    """Wall and CPU seconds of a cold `make microlite` (TFLM's whole library, the old
    recipe), and its object count."""
    tree = os.path.join(work, "tflm-full")
    shutil.copytree(tflm, tree, symlinks=True, ignore=shutil.ignore_patterns("gen"))
    subprocess.run(["chmod", "-R", "u+w", tree], check=True)
    command = ["make", "-f", "tensorflow/lite/micro/tools/make/Makefile", "TARGET=cortex_m_generic",
               "TARGET_ARCH=cortex-m4", "OPTIMIZED_KERNEL_DIR=cmsis_nn",
               f"TARGET_TOOLCHAIN_ROOT={os.path.dirname(gcc)}/", f"-j{os.cpu_count() or 2}",
               "microlite"]
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    started, cpu = time.time(), _children_cpu_seconds()
    with open(os.path.join(work, "full.log"), "w") as log:
        # Its own process group, so an interrupted benchmark leaves no make behind.
        process = subprocess.Popen(command, cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            rc = process.wait()
        except BaseException:
            os.killpg(process.pid, 9)
            process.wait()
            raise
    seconds, cpu = time.time() - started, _children_cpu_seconds() - cpu
    objects = sum(name.endswith(".o") for _, _, files in os.walk(os.path.join(tree, "gen"))
                  for name in files)
    if rc != 0:
        raise RuntimeError(f"the full TFLM build failed; see {work}/full.log")
    return seconds, cpu, objects


def run_build(args, data, work):
    """Cold build times (selective vs full library) and set-up cost, MCU preset."""
    import keras
    import numpy as np

    import keras_egt as egt
    from keras_egt import export
    from keras_egt.export import firmware

    (x_train, _), (x_test, _) = data
    keras.utils.set_random_seed(args.seed)
    model = egt.EarlyExitMCU(9, x_train.shape[1:])
    model(x_train[:1])
    folder = os.path.join(work, "mcu")
    manifest = export.export_cascade(model, folder, x_train[:64], threshold=args.threshold)
    methods = firmware.resolver_methods(manifest)
    tflm = firmware.find_tflm()
    gcc = firmware.find_toolchain()["gcc"]
    cache = args.cache_dir or os.path.join(work, "cache")
    cold = not os.path.isdir(cache)
    print(f"== {'cold' if cold else 'warm'} selective build ({', '.join(methods)})", flush=True)
    cpu = _children_cpu_seconds()
    selective = firmware.tflm_library(methods, cache_dir=cache, verbose=True)
    selective_cpu = _children_cpu_seconds() - cpu
    full_seconds = full_cpu = full_objects = None
    if args.full_build:
        print(f"== cold full-library build (make microlite, -j{os.cpu_count()})", flush=True)
        full_seconds, full_cpu, full_objects = _full_library_seconds(tflm, gcc, work)
    x = x_test[: args.build_samples]
    designs = {}
    for design in ("shared", "per_segment"):
        print(f"== firmware, {design} arena, {len(x)} samples", flush=True)
        report = firmware.run_firmware(folder, x, output=False, cache_dir=cache, arena=design)
        exits = np.array(report["exits"])
        per_sample = np.array(report["instructions_per_sample"])
        straight = report["instructions_final_only"]
        exit1 = float(np.mean(per_sample[exits == 0])) if np.any(exits == 0) else None
        # A sample that exits at 1 runs segment 1 only: all but its Invoke is overhead.
        seg1 = report["instructions_per_segment"][0]
        invoke1 = report["invoke_instructions_per_segment"][0]
        designs[design] = {
            "bit_exact": report["bit_exact"],
            "setup_instructions_per_segment": report["setup_instructions_per_segment"],
            "invoke_instructions_per_segment": report["invoke_instructions_per_segment"],
            "boot_setup_instructions": report["boot_setup_instructions"],
            "setup_share_at_exit_1": (seg1 - invoke1) / seg1,
            "exit_1_sample_instructions": exit1,
            "final_only_instructions": straight,
            "arena_bytes": report["arena_bytes"],
            "ram_bytes": report["ram_bytes"],
            "arena_bytes_per_segment_target": report["arena_bytes_per_segment_target"],
        }
    return {
        "cascade": "EarlyExitMCU (untrained export: op set and per-segment instructions)",
        "ops": methods,
        "selective_seconds": selective["seconds"], "selective_objects": selective["total"],
        "full_library_seconds": full_seconds, "full_library_objects": full_objects,
        "selective_cold": cold,
        "speedup": full_seconds / selective["seconds"] if full_seconds else None,
        "selective_cpu_seconds": selective_cpu, "full_library_cpu_seconds": full_cpu,
        "cpu_speedup": full_cpu / selective_cpu if full_cpu else None,
        "load_average_at_end": os.getloadavg(),
        "jobs": os.cpu_count(), "designs": designs,
    }


def build_markdown(build):
    """The build and set-up lines of RESULTS.md."""
    d = build["designs"]
    shared, own = d["shared"], d["per_segment"]
    if build["full_library_seconds"] is None or not build["selective_cold"]:
        timing = (f"TFLM build for the MCU preset's cascade ({', '.join(build['ops'])}): "
                  f"{build['selective_objects']} objects; build times not measured in this run "
                  "(--no-full-build or a warm --cache-dir).")
    else:
        timing = (
            f"Cold TFLM build for the MCU preset's cascade ({', '.join(build['ops'])}), "
            f"{build['jobs']} jobs, same run: selective {build['selective_seconds']:.0f} s "
            f"({build['selective_objects']} objects) vs full microlite "
            f"{build['full_library_seconds']:.0f} s ({build['full_library_objects']} objects): "
            f"{build['speedup']:.1f}x faster (compiler CPU time {build['selective_cpu_seconds']:.0f}"
            f" s vs {build['full_library_cpu_seconds']:.0f} s: {build['cpu_speedup']:.1f}x).")
    return "\n".join([
        timing,
        "",
        "| arena design | set-up + copies per segment (instructions) | share of segment 1 | "
        "boot (once) | arena | RAM |",
        "|---|---|---:|---:|---:|---:|",
        *(f"| {name} | {', '.join(f'{v:,}' for v in r['setup_instructions_per_segment'])} | "
          f"{100 * r['setup_share_at_exit_1']:.2f}% | {r['boot_setup_instructions']:,} | "
          f"{r['arena_bytes']:,} B | {r['ram_bytes']:,} B |"
          for name, r in (("shared (interpreter per sample)", shared),
                          ("one interpreter per segment (boot)", own))),
    ])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["micro"], choices=["micro", "paper"])
    parser.add_argument("--epochs", type=int, default=15, help="micro training epochs")
    parser.add_argument("--paper-epochs", type=int, default=2,
                        help="paper training epochs; 0: untrained (sizes and instructions per "
                        "segment do not depend on training; exit shares do)")
    parser.add_argument("--lam", type=float, default=0.3)
    parser.add_argument("--model-micro", default=None)
    parser.add_argument("--model-paper", default=None)
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--samples", type=int, default=200, help="micro: radar test samples")
    parser.add_argument("--paper-samples", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=RESULTS)
    parser.add_argument("--merge", action="store_true",
                        help="keep the other presets already in --output (run one preset at a time)")
    parser.add_argument("--quick", action="store_true", help="smoke run: micro, 2 epochs, 20 samples")
    parser.add_argument("--build", action="store_true",
                        help="only the cold build times and the set-up cost (MCU preset)")
    parser.add_argument("--build-samples", type=int, default=8)
    parser.add_argument("--no-full-build", dest="full_build", action="store_false",
                        help="--build without the full-library baseline (minutes)")
    parser.add_argument("--cache-dir", default=None,
                        help="--build: reuse this TFLM cache (then the selective build is warm)")
    args = parser.parse_args(argv)
    if args.quick:
        args.presets, args.epochs, args.samples = ["micro"], 2, 20
        if args.output == RESULTS:
            args.output = os.path.join(HERE, "results", "firmware_quick.json")

    import keras

    if keras.backend.backend() != "tensorflow":
        sys.exit("benchmarks/firmware.py needs KERAS_BACKEND=tensorflow (export).")
    from keras_egt.datasets import radar_gestures

    started = time.time()
    data = radar_gestures.load_data()
    if args.build:
        import _common

        results = {}
        if os.path.exists(args.output):
            with open(args.output) as f:
                results = json.load(f)
        with tempfile.TemporaryDirectory(prefix="keras_egt_firmware_build_") as work:
            build = run_build(args, data, work)
        build["machine"] = _common.machine()
        build["markdown"] = build_markdown(build)
        results["build"] = build
        _common.write_json(args.output, results)
        print(build["markdown"])
        print(f"Wrote {args.output} ({(time.time() - started) / 60:.1f} min).")
        return
    results = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "python": platform.python_version()},
        "settings": {k: v for k, v in vars(args).items() if k != "output"},
        "presets": {},
    }
    if args.merge and os.path.exists(args.output):
        with open(args.output) as f:
            previous = json.load(f)
        results["presets"] = {k: v for k, v in previous["presets"].items() if k not in args.presets}
        results["earlier_runs"] = previous.get("earlier_runs", []) + [
            {"settings": previous["settings"], "presets": sorted(previous["presets"]),
             "seconds": previous.get("seconds")}]
    with tempfile.TemporaryDirectory(prefix="keras_egt_firmware_bench_") as work:
        for preset in args.presets:
            results["presets"][preset] = run_preset(preset, args, data, work)
    results["presets"] = {k: results["presets"][k] for k in ("micro", "paper")
                          if k in results["presets"]}
    results["seconds"] = time.time() - started
    results["markdown"] = markdown(results)
    egt_atomic.write_text(args.output, json.dumps(results, indent=1))
    print(results["markdown"])
    print(f"Wrote {args.output} ({results['seconds'] / 60:.1f} min).")


if __name__ == "__main__":
    main()
