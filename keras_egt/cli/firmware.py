"""`keras-egt firmware`: the exported cascade as Cortex-M4 firmware, on an emulated board.

    keras-egt firmware deploy/                          # the built-in radar test set
    keras-egt firmware deploy/ --samples mine.npz --limit 200 --output fw.json
    KERAS_EGT_TFLM_DIR=~/tflite-micro keras-egt firmware deploy/

builds TFLM with CMSIS-NN for Cortex-M4 (the core and the kernels of the deploy
folder's ops only, in parallel with a progress bar; cached, and an interrupted build
resumes), links the deploy folder's segments, the kit's egt_cascade.c (package data) and a test harness holding the samples for the MPS2 AN386
board, runs it under qemu-system-arm, checks labels and exits bit-exact against TFLM's
Python interpreter, and writes firmware.json (flash, RAM, instructions, speedup).
"""

import os
import sys

from keras_egt.cli import CLIError


def register(subparsers):
    """Adds the `firmware` command to `subparsers`."""
    parser = subparsers.add_parser(
        "firmware", help="build and run the cascade as Cortex-M4 firmware (TFLM + CMSIS-NN, QEMU)",
        description="Builds the exported cascade as firmware for an emulated Cortex-M4 (MPS2 "
        "AN386) with TensorFlow Lite Micro and CMSIS-NN kernels, runs it under qemu-system-arm, "
        "checks its labels and exits bit-exact against TFLM's Python interpreter, and writes "
        "firmware.json: flash and RAM from the linker, instructions per segment and per sample "
        "with and without early exit, the speedup and an estimated time at 64 MHz. Needs "
        "gcc-arm-none-eabi, libnewlib-arm-none-eabi, libstdc++-arm-none-eabi-newlib, "
        "qemu-system-arm and a TFLM source tree.")
    parser.add_argument("deploy_dir", metavar="DEPLOY_DIR", help="a folder written by keras-egt export")
    parser.add_argument("--samples", metavar="FILE.npz", default=None,
                        help="inputs to run: an .npz with an array x, or x_test (default: the "
                        "built-in radar test set)")
    parser.add_argument("--limit", type=int, default=None, help="run only the first N samples")
    parser.add_argument("--output", "-o", default=None,
                        help="the report to write (default DEPLOY_DIR/firmware.json)")
    parser.add_argument("--tflm-dir", default=None,
                        help="TFLM source tree with its third-party downloads (default "
                        "$KERAS_EGT_TFLM_DIR, else shared/third_party/tflite-micro beside "
                        "the keras-egt checkout)")
    parser.add_argument("--cache-dir", default=None,
                        help="cache of the TFLM build (default $KERAS_EGT_CACHE_DIR or "
                        "~/.cache/keras_egt)")
    parser.set_defaults(func=firmware_command)


def load_samples(path):
    """The inputs of an .npz file: its array `x`, else `x_test` (as `load_npz` reads it)."""
    import numpy as np

    from keras_egt.datasets import loaders

    if not os.path.isfile(path):
        raise FileNotFoundError(f"No such samples file: {path}")
    with np.load(path, allow_pickle=False) as data:
        files = set(data.files)
        if "x" in files:
            x = np.asarray(data["x"])
            return x[..., None] if x.ndim == 3 else x
    if "x_test" not in files:
        raise CLIError(f"{path}: no array 'x' or 'x_test' (found {sorted(files)}).")
    _, (x_test, _) = loaders.load_npz(path)
    return x_test


def firmware_command(args):
    """Handler of `keras-egt firmware`; returns the exit code."""
    from keras_egt.export import firmware, tflm_build

    x = load_samples(args.samples) if args.samples else None
    if args.limit is not None:
        if args.limit < 1:
            raise CLIError(f"--limit must be >= 1, got {args.limit}.")
        if x is None:
            from keras_egt.datasets import radar_gestures

            _, (x, _) = radar_gestures.load_data()
        x = x[: args.limit]
    try:
        report = firmware.run_firmware(args.deploy_dir, x, output=args.output,
                                       tflm_dir=args.tflm_dir, cache_dir=args.cache_dir,
                                       verbose=True)
    except firmware.FirmwareMismatchError as error:
        print(f"keras-egt firmware: NOT bit-exact: {error}")
        return 1
    except tflm_build.BuildInterrupted as stopped:
        print(f"keras-egt firmware: {stopped}", file=sys.stderr)  # one line, no traceback
        return 130
    print(firmware.format_firmware_report(report))
    return 0
