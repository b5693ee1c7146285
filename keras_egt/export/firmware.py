"""The exported cascade as Cortex-M4 firmware: TFLM with CMSIS-NN, run on an emulated board.

`run_firmware(deploy_dir)` (CLI: `keras-egt firmware DEPLOY_DIR`) builds a test
firmware from a deploy folder and runs it under `qemu-system-arm -M mps2-an386` (an
MPS2 AN386 board, Cortex-M4):

* a TFLM library for Cortex-M4 of the core and the kernels of the manifest's ops only
  (CMSIS-NN versions where TFLM has them; `tflm_library`, see `tflm_build`): TFLM's own
  compile commands, run in parallel with a progress bar, cached per object (keyed by
  the TFLM sources, the compiler and the recipe; the archive also by flags and op set),
  and resumed after Ctrl-C;
* the deploy folder's `model_data.c` and `egt_manifest.h` (rewritten from its
  `manifest.json`, so they match the segments), the kit's `egt_cascade.c`, and the harness
  `mcu/egt_harness.cc` holding the input samples as int8 C arrays (quantized here
  exactly as `CascadeRunner` quantizes them), linked with `mcu/mps2_an386.ld`. The kit is
  package data (`keras_egt/export/kit/`), so it comes with the wheel.

The harness first finds each segment's smallest TFLM arena on the target (CMSIS-NN asks
for scratch memory the host's reference kernels do not), then, by default, builds one
interpreter per segment at boot, each allocated once in its own arena region, and runs
every sample twice: as a cascade (the export's thresholds) and straight through all
segments (final exit only). A sample pays only the copies around each Invoke;
`arena="shared"` builds the other design (one arena of the largest segment's size, an
interpreter and AllocateTensors per segment per sample: less RAM, more instructions).
The op resolver registers exactly the manifest's ops (`EGT_FOR_EACH_TFLM_OP`), and the
harness prints the builtin codes it finds. It prints labels, exits and the
emulated clock around every segment. Under `-icount shift=7` each instruction advances
emulated time by 128 ns, and the board's SysTick runs at 25 MHz, so ticks × 40/128 are
instructions, exactly; a calibration loop of known length checks this on every run.

The labels and exits must equal `load_cascade(deploy_dir, runtime="tflm").predict`
bit for bit (any difference raises `FirmwareMismatchError`). Flash and RAM come from the
linker (section sizes and the map file), split into model data, TFLM runtime, the kit
(`egt_cascade.c`), the harness, and C library + startup.

Needs (Debian): `gcc-arm-none-eabi libnewlib-arm-none-eabi
libstdc++-arm-none-eabi-newlib qemu-system-arm`, and a TFLM source tree with its
third-party downloads in place: the `tflm_dir` argument, else `$KERAS_EGT_TFLM_DIR`, else
`shared/third_party/tflite-micro` beside the keras-egt checkout. The build cache lives in
`$KERAS_EGT_CACHE_DIR` (default `~/.cache/keras_egt`).
"""

import json
import math
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from keras_egt import atomic

__all__ = [
    "CLOCK_HZ",
    "FirmwareMismatchError",
    "find_tflm",
    "find_toolchain",
    "format_firmware_report",
    "resolver_methods",
    "run_firmware",
    "tflm_library",
]

TFLM_DIR_ENV = "KERAS_EGT_TFLM_DIR"
TFLM_REPOSITORY = "https://github.com/tensorflow/tflite-micro"
TFLM_COMMIT = "90b983c2b3f1480642e040bbd2ddb37b998f3424"  # the commit keras-egt is tested with
TFLM_DOWNLOADS_COMMAND = ("make -f tensorflow/lite/micro/tools/make/Makefile TARGET=cortex_m_generic "
                          "TARGET_ARCH=cortex-m4 OPTIMIZED_KERNEL_DIR=cmsis_nn third_party_downloads")
CACHE_DIR_ENV = "KERAS_EGT_CACHE_DIR"
CLOCK_HZ = 64_000_000  # the stated clock of the time estimate (nRF52840-class)
QEMU_MACHINE = "mps2-an386"
ICOUNT_SHIFT = 7  # 2**7 ns of emulated time per instruction
SYSTICK_HZ = 25_000_000  # MPS2 AN386 core clock in QEMU (SysTick, CLKSOURCE = core)
FIRMWARE_JSON = "firmware.json"
PSRAM_BYTES = 16 << 20  # QEMU mps2-an386: 16 MB at 0x21000000
FLASH_BYTES = 4 << 20  # 4 MB code memory at 0x00000000
STACK_BYTES = 0x10000  # reserved by the linker script; the peak is measured
_ARENA_DESIGNS = {
    "per_segment": "one interpreter per segment, allocated once at boot in its own arena region",
    "shared": "one shared arena, an interpreter built and allocated per segment per sample",
}

_REPO = Path(__file__).resolve().parents[2]  # a checkout's root (the offline TFLM tree)
_KIT = Path(__file__).resolve().parent / "kit"  # package data: shipped in the wheel
_DOWNLOADS = "tensorflow/lite/micro/tools/make/downloads"
_DEVICE = f"{_DOWNLOADS}/cmsis/Cortex_DFP/Device/ARMCM4"
_APT = ("gcc-arm-none-eabi libnewlib-arm-none-eabi libstdc++-arm-none-eabi-newlib "
        "qemu-system-arm")
# Flags of the harness, matching the library's (see the TFLM Makefile's cortex_m_generic).
_ARCH = ["-mcpu=cortex-m4+nofp", "-mthumb", "-mfloat-abi=soft", "-mlittle-endian"]
_DEFINES = ["-DARMCM4", "-DCPU_M4=1", '-DCMSIS_DEVICE_ARM_CORTEX_M_XX_HEADER_FILE="ARMCM4.h"',
            "-DTF_LITE_STATIC_MEMORY", "-DCMSIS_NN", "-DTF_LITE_MCU_DEBUG_LOG"]
_COMMON = ["-O2", "-ffunction-sections", "-fdata-sections", "-funsigned-char", "-Wall"]
_CXX = ["-std=c++17", "-fno-rtti", "-fno-exceptions", "-fno-threadsafe-statics",
        "-fno-unwind-tables", "-fno-asynchronous-unwind-tables"]


class FirmwareMismatchError(RuntimeError):
    """The emulated firmware decided differently from TFLM's Python interpreter."""


# ---------------------------------------------------------------------------------
# Tools and the TFLM tree


def find_toolchain():
    """Paths of the Arm GCC toolchain and the system emulator, or a one-line error.

    Returns:
        A dict with `gcc`, `gxx`, `size`, `readelf`, `qemu` (absolute paths).

    Raises:
        FileNotFoundError: a tool is not on PATH; the message names the package.
    """
    tools = {}
    for key, name, package in (
        ("gcc", "arm-none-eabi-gcc", "gcc-arm-none-eabi libnewlib-arm-none-eabi"),
        ("gxx", "arm-none-eabi-g++", "libstdc++-arm-none-eabi-newlib"),
        ("size", "arm-none-eabi-size", "binutils-arm-none-eabi"),
        ("readelf", "arm-none-eabi-readelf", "binutils-arm-none-eabi"),
        ("qemu", "qemu-system-arm", "qemu-system-arm"),
    ):
        path = shutil.which(name)
        if path is None:
            raise FileNotFoundError(
                f"{name} not found on PATH: install the Debian package(s) {package} "
                f"(all firmware tools: apt-get install -y {_APT})."
            )
        tools[key] = path
    return tools


def find_tflm(tflm_dir=None):
    """The TFLM source tree to build: `tflm_dir`, else $KERAS_EGT_TFLM_DIR, else the
    `shared/third_party/tflite-micro` folder beside the keras-egt checkout.

    Raises:
        FileNotFoundError: no usable tree; one line naming the TFLM repository, the
            commit keras-egt is tested with (`TFLM_COMMIT`), the Makefile target that
            fetches its third-party downloads, and --tflm-dir / $KERAS_EGT_TFLM_DIR.
    """
    if tflm_dir is None:
        tflm_dir = os.environ.get(TFLM_DIR_ENV)
    candidates = ([Path(tflm_dir)] if tflm_dir else
                  [_REPO.parent / "shared" / "third_party" / "tflite-micro",
                   _REPO / "shared" / "third_party" / "tflite-micro"])
    for path in candidates:
        if (path / "tensorflow/lite/micro/tools/make/Makefile").is_file():
            missing = [d for d in ("cmsis_nn", "cmsis", "flatbuffers", "gemmlowp")
                       if not (path / _DOWNLOADS / d).is_dir()]
            if missing:
                raise FileNotFoundError(
                    f"the TFLM tree {str(path)!r} lacks its third-party downloads "
                    f"({', '.join(missing)} under {_DOWNLOADS}): run "
                    f"`{TFLM_DOWNLOADS_COMMAND}` in it once, or point {TFLM_DIR_ENV} at a "
                    f"complete tree.")
            return path.resolve()
    where = str(candidates[0]) if tflm_dir else " or ".join(str(p) for p in candidates)
    raise FileNotFoundError(
        f"no TensorFlow Lite Micro source tree found: get {TFLM_REPOSITORY} at commit "
        f"{TFLM_COMMIT} (the one keras-egt is tested with), fetch its third-party "
        f"downloads with `{TFLM_DOWNLOADS_COMMAND}` in it, and pass --tflm-dir or set "
        f"{TFLM_DIR_ENV}. Received: tflm_dir={where}")


def _cache_root(cache_dir=None):
    if cache_dir is None:
        cache_dir = os.environ.get(CACHE_DIR_ENV)
    if cache_dir is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        cache_dir = os.path.join(base, "keras_egt")
    path = Path(cache_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _version(tool):
    out = subprocess.run([tool, "--version"], capture_output=True, text=True)
    return (out.stdout or out.stderr).splitlines()[0].strip() if (out.stdout or out.stderr) else "?"


def resolver_methods(manifest):
    """The op resolver methods (without `Add`) of every op the manifest's segments use.

    Args:
        manifest: a deploy folder's manifest (dict).

    Returns:
        A sorted list, e.g. `["Conv2D", "FullyConnected", "Softmax"]`: what the
        firmware registers (`EGT_FOR_EACH_TFLM_OP` of egt_manifest.h) and compiles.

    Example:
    >>> resolver_methods({"segments": [{"ops": ["CONV_2D", "SOFTMAX"]}]})
    ['Conv2D', 'Softmax']
    """
    from keras_egt.export import c_sources

    return sorted({c_sources.tflm_op_method(op) for s in manifest["segments"] for op in s["ops"]})


def tflm_library(ops, tflm_dir=None, cache_dir=None, verbose=False):
    """Builds (once) TFLM for Cortex-M4 with CMSIS-NN: the core and the ops' kernels only.

    See `keras_egt.export.tflm_build.build_library`: TFLM's own compile commands for
    the objects the ops need, compiled in parallel into the cache with a progress bar;
    Ctrl-C keeps the finished objects and the next call resumes.

    Args:
        ops: op resolver methods (`resolver_methods(manifest)`), e.g. `["Conv2D"]`.
        tflm_dir: the TFLM tree (see `find_tflm`).
        cache_dir: the cache root (default $KERAS_EGT_CACHE_DIR or ~/.cache/keras_egt).
        verbose: print the log's path and the progress bar.

    Returns:
        The build's dict (`library`: the archive's Path, `sources`, `compiled`, `total`,
        `log`, `seconds`).

    Raises:
        tflm_build.BuildInterrupted: Ctrl-C or SIGTERM stopped the build.

    Example:
    >>> build = tflm_library(["Conv2D", "Softmax"])  # doctest: +SKIP
    >>> build["library"]  # doctest: +SKIP
    """
    from keras_egt.export import tflm_build

    tools = find_toolchain()
    return tflm_build.build_library(find_tflm(tflm_dir), ops, _cache_root(cache_dir),
                                    tools["gcc"], verbose=verbose)


# ---------------------------------------------------------------------------------
# Building an image


_KIT_FILES = (("egt_cascade.c",), ("egt_cascade.h",), ("mcu", "egt_harness.cc"),
              ("mcu", "mps2_an386.ld"))


def _kit_file(*parts):
    path = _KIT.joinpath(*parts)
    if not path.is_file():
        raise FileNotFoundError(
            f"the firmware kit file {path} is missing from the keras-egt installation: "
            "reinstall keras-egt (the kit is package data of keras_egt.export). "
            f"Received: kit={_KIT}")
    return path


def _samples_sources(q, folder):
    """egt_samples.h and an assembler file that includes the raw int8 bytes (.incbin:
    fast for megabytes of samples, where a C initializer is slow to compile)."""
    n, size = q.shape[0], int(np.prod(q.shape[1:]))
    (folder / "egt_samples.bin").write_bytes(np.ascontiguousarray(q, np.int8).tobytes())
    (folder / "egt_samples.h").write_text(
        "/* egt_samples.h: int8 inputs of the firmware harness (generated). */\n"
        "#ifndef EGT_SAMPLES_H_\n#define EGT_SAMPLES_H_\n#include <stdint.h>\n"
        "#ifdef __cplusplus\nextern \"C\" {\n#endif\n"
        f"#define EGT_NUM_SAMPLES {n}\n"
        f"extern const int8_t g_egt_samples[EGT_NUM_SAMPLES][{size}];\n"
        "#ifdef __cplusplus\n}\n#endif\n#endif\n")
    source = folder / "egt_samples.S"
    source.write_text(
        '/* The harness\'s input samples, in their own section (outside the flash figure). */\n'
        '  .section .egt_samples, "a"\n  .balign 16\n  .global g_egt_samples\n'
        f'g_egt_samples:\n  .incbin "{folder / "egt_samples.bin"}"\n')
    return source


def _run(command, cwd, what):
    process = subprocess.run(command, cwd=cwd, capture_output=True, text=True,
                             stdin=subprocess.DEVNULL)
    if process.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{' '.join(map(str, command))}\n"
                           + (process.stderr or process.stdout)[-3000:])
    return process.stdout


class _Builder:
    """Compiles the fixed objects once; links images with a given arena and samples."""

    def __init__(self, work, tree, library, tools, model_in_psram):
        self.work, self.tree, self.library, self.tools = Path(work), Path(tree), Path(library), tools
        device = self.tree / _DEVICE
        downloads = self.tree / _DOWNLOADS
        self.includes = [
            f"-I{self.work}", f"-I{_KIT}", f"-I{self.tree}",
            f"-I{downloads / 'flatbuffers/include'}", f"-I{downloads / 'gemmlowp'}",
            f"-I{downloads / 'cmsis_nn/Include'}", f"-I{downloads / 'cmsis/CMSIS/Core/Include'}",
            f"-I{device / 'Include'}",
        ]
        script = _kit_file("mcu", "mps2_an386.ld").read_text()
        if model_in_psram:
            script = script.replace('REGION_ALIAS("MODEL", FLASH);', 'REGION_ALIAS("MODEL", PSRAM);')
        self.script = self.work / "mps2_an386.ld"
        self.script.write_text(script)
        self.objects = [
            self._cc(_kit_file("egt_cascade.c")),
            self._cc(self.work / "model_data.c"),
            self._cc(device / "Source" / "startup_ARMCM4.c"),
            self._cc(device / "Source" / "system_ARMCM4.c"),
        ]

    def _cc(self, source, out=None, extra=()):
        out = self.work / (out or Path(source).stem + ".o")
        _run([self.tools["gcc"], *_ARCH, *_DEFINES, *_COMMON, "-std=c99", *self.includes,
              *extra, "-c", str(source), "-o", str(out)], self.work, f"compiling {source}")
        return out

    def image(self, name, arenas, q, probe=False):
        """Links an image; `arenas`: one shared arena's bytes, or a list (one per segment)."""
        samples = self._cc(_samples_sources(q, self.work))
        harness = self.work / f"egt_harness_{name}.o"
        if isinstance(arenas, (list, tuple)):
            layout = [f"-DEGT_FW_ARENA_BYTES={sum(arenas)}", "-DEGT_FW_SHARED_ARENA=0",
                      "-DEGT_FW_SEGMENT_ARENAS={" + ",".join(map(str, arenas)) + "}"]
        else:
            layout = [f"-DEGT_FW_ARENA_BYTES={int(arenas)}", "-DEGT_FW_SHARED_ARENA=1"]
        _run([self.tools["gxx"], *_ARCH, *_DEFINES, *_COMMON, *_CXX, *self.includes,
              *layout, f"-DEGT_FW_PROBE={int(probe)}",
              "-c", str(_kit_file("mcu", "egt_harness.cc")), "-o", str(harness)],
             self.work, "compiling the harness")
        elf, map_file = self.work / f"{name}.elf", self.work / f"{name}.map"
        _run([self.tools["gxx"], *_ARCH, "-nostartfiles", "--specs=rdimon.specs",
              f"-T{self.script}", "-Wl,--gc-sections", f"-Wl,-Map={map_file}",
              f"-Wl,--defsym=__STACK_SIZE={STACK_BYTES}",
              str(harness), str(samples), *map(str, self.objects),
              str(self.library), "-lm", "-o", str(elf)], self.work, "linking the firmware")
        return elf, map_file

    def run(self, elf, timeout):
        command = [self.tools["qemu"], "-M", QEMU_MACHINE, "-nographic", "-monitor", "none",
                   "-semihosting", "-icount", f"shift={ICOUNT_SHIFT}", "-kernel", str(elf)]
        try:
            process = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                                     stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"the firmware did not finish within {timeout:.0f} s under "
                               f"{' '.join(command)}") from None
        lines = process.stdout.splitlines()
        if process.returncode != 0 or "done" not in lines:
            raise RuntimeError(
                f"the firmware failed (exit code {process.returncode}) under "
                f"{' '.join(command)}:\n" + "\n".join(lines[-15:]) + process.stderr[-1000:])
        return lines


# ---------------------------------------------------------------------------------
# Reading what it printed


def _instructions(ticks, intervals, overhead):
    """Emulated SysTick ticks to instructions (icount: 2**shift ns per instruction)."""
    ns_per_tick = 1e9 / SYSTICK_HZ
    return (np.asarray(ticks, np.float64) - intervals * overhead) * ns_per_tick / 2 ** ICOUNT_SHIFT


def _parse(lines, num_segments):
    out = {"c": [], "f": [], "arena": {}, "used": {}, "tflm_log": []}
    for line in lines:
        words = line.split()
        if not words:
            continue
        tag = words[0]
        if tag in ("c", "f"):
            out[tag].append([int(w) for w in words[1:]])
        elif tag == "calibration":
            out["calibration"] = (int(words[1]), int(words[2]))
        elif tag == "resolver":
            out["resolver"] = [int(w) for w in words[1:]]
        elif tag in ("overhead", "stack", "heap", "boot"):
            out[tag] = int(words[1])
        elif tag == "arena":
            out["arena"][int(words[1])] = [int(w) for w in words[2:]]
        elif tag == "used":
            out["used"][int(words[1])] = int(words[2])
        elif tag == "tflm:":
            out["tflm_log"].append(line)
    known, ticks = out["calibration"]
    measured = float(_instructions(ticks, 1, out["overhead"]))
    if abs(measured - known) > 8:
        raise RuntimeError(
            f"the emulated clock does not count instructions as assumed: a loop of {known} "
            f"instructions measured {measured:.1f} (SysTick {SYSTICK_HZ} Hz, icount shift "
            f"{ICOUNT_SHIFT}); this qemu-system-arm {QEMU_MACHINE} differs.")
    out["calibration_error"] = measured - known
    return out


_CATEGORY_NAMES = ("model", "tflm", "kit", "harness", "system")


def _category(source):
    name = os.path.basename(source)
    if "libtensorflow-microlite.a" in source or "libtflm-" in source:
        return "tflm"
    if name == "model_data.o":
        return "model"
    if name == "egt_cascade.o":
        return "kit"
    if name.startswith(("egt_harness", "egt_samples")):
        return "harness"
    return "system"  # startup, C library, libgcc, libstdc++, linker fill


def _map_sizes(map_file):
    """{output section: {category: bytes}} from a GNU ld map file."""
    sizes, section, pending = {}, None, None
    text = Path(map_file).read_text(errors="replace")
    text = text.split("Linker script and memory map", 1)[-1]
    entry = re.compile(r"^\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+(\S.*)$")
    for line in text.splitlines():
        if re.match(r"^\.[\w.]+", line):
            section = line.split()[0]
            pending = None
            continue
        if section is None:
            continue
        stripped = line.strip()
        m = re.match(r"^ (\*fill\*|[.\w][^\s]*|COMMON)\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s*(\S.*)?$", line)
        if m:
            name, size, source = m.group(1), int(m.group(3), 16), m.group(4) or ""
            if name == "*fill*":
                source = "*fill*"
            if source and not source.startswith("0x"):
                sizes.setdefault(section, {}).setdefault(_category(source), 0)
                sizes[section][_category(source)] += size
            pending = None
            continue
        if re.match(r"^ [.\w][^\s]*$", line) and not stripped.startswith("*"):
            pending = stripped
            continue
        m = entry.match(line)
        if m and pending is not None:
            sizes.setdefault(section, {}).setdefault(_category(m.group(3)), 0)
            sizes[section][_category(m.group(3))] += int(m.group(2), 16)
            pending = None
    return sizes


def _section_table(readelf, elf):
    """[(name, size, address, type)] of the image's allocated sections (`readelf -S`)."""
    out = subprocess.run([readelf, "-S", "-W", str(elf)], capture_output=True, text=True,
                         check=True).stdout
    sections = []
    for m in re.finditer(r"\]\s+(\.\S+)\s+(\w+)\s+([0-9a-f]+)\s+[0-9a-f]+\s+([0-9a-f]+)"
                         r"\s+[0-9a-f]+\s+(\w*)", out):
        name, kind, address, size, flags = m.groups()
        if "A" in flags:
            sections.append((name, int(size, 16), int(address, 16), kind))
    return sections


def _sizes(tools, elf, map_file, parsed, arena_bytes):
    ram, psram = 0x20000000, 0x21000000
    per_section = _map_sizes(map_file)
    flash = dict.fromkeys(_CATEGORY_NAMES, 0)
    ram_split = dict.fromkeys(_CATEGORY_NAMES, 0)
    outside = {}
    berkeley = subprocess.run([tools["size"], str(elf)], capture_output=True, text=True,
                              check=True).stdout.splitlines()[1].split()
    for name, size, address, _ in _section_table(tools["readelf"], elf):
        if size == 0 or name in (".stack",):
            continue
        split = dict(per_section.get(name, {}))
        split["system"] = split.get("system", 0) + size - sum(split.values())  # fill, tables
        if psram <= address < psram + PSRAM_BYTES and name != ".egt_model":
            outside[name] = size  # the test samples: not part of the firmware
            continue
        # .data counts twice: its load image in flash, itself in RAM. The model is flash
        # content even where the emulator holds it in PSRAM (too big for its 4 MB).
        if address < FLASH_BYTES or name in (".data", ".egt_model"):
            for key, value in split.items():
                flash[key] += value
        if ram <= address < psram:
            for key, value in split.items():
                ram_split[key] += value
    ram_split["harness"] -= arena_bytes
    ram_split["arena"] = arena_bytes
    ram_split["stack"] = parsed["stack"]
    ram_split["heap"] = parsed["heap"]
    return {
        "flash_bytes": int(sum(flash.values())),
        "ram_bytes": int(sum(ram_split.values())),
        "flash_split": {k: int(v) for k, v in flash.items()},
        "ram_split": {k: int(v) for k, v in ram_split.items()},
        "size": {"text": int(berkeley[0]), "data": int(berkeley[1]), "bss": int(berkeley[2])},
        "stack_reserved_bytes": STACK_BYTES,
        "outside_flash": outside,
    }


# ---------------------------------------------------------------------------------
# The public function


def _load_samples(runner, x):
    if x is None:
        from keras_egt.datasets import radar_gestures

        _, (x, _) = radar_gestures.load_data()
    q = runner.quantize_input(x)
    if len(q) == 0:
        raise ValueError("no samples to run; pass at least one input.")
    return np.ascontiguousarray(q)


def run_firmware(deploy_dir, x=None, output=None, tflm_dir=None, cache_dir=None,
                 samples_per_image=None, timeout=None, arena="per_segment", verbose=False):
    """Builds the cascade as Cortex-M4 firmware, runs it emulated, and checks it bit-exact.

    See the module docstring for what is built and how it is measured.

    Args:
        deploy_dir: a folder written by `export_cascade` (any number of segments).
        x: the inputs `(n, H, W, C)`, float (preprocessed as in training) or int8
            (already quantized with segment 1's input parameters); default: the
            built-in radar test set.
        output: where to write the report (default `DEPLOY_DIR/firmware.json`); None
            writes there, False writes nothing.
        tflm_dir: the TFLM source tree (default: $KERAS_EGT_TFLM_DIR, else
            shared/third_party/tflite-micro beside the checkout).
        cache_dir: the TFLM build cache (default $KERAS_EGT_CACHE_DIR or
            ~/.cache/keras_egt).
        samples_per_image: samples linked into one image (default: as many as the
            emulator's 16 MB PSRAM holds); more run in several images.
        timeout: seconds per emulator run (default: generous, from the model's size).
        arena: `"per_segment"`: one interpreter per segment, each allocated once at boot
            in its own arena region (no per-sample set-up; RAM: the sum of the
            segments' arenas); `"shared"`: one arena of the largest segment's size, an
            interpreter built and allocated per segment per sample (tflite/README.md,
            option A).
        verbose: print progress.

    Returns:
        The report (also written to `output`): `samples`, `bit_exact`, `labels`,
        `exits` (0-based, as `CascadeRunner.predict`), `flash_bytes`, `ram_bytes` and
        their splits, `instructions_per_segment`, `instructions_with_early_exit`,
        `instructions_final_only`, `speedup`, `estimated_ms_at_64mhz`, the target
        arena, and the tools used.

    Raises:
        FirmwareMismatchError: a label or exit differs from TFLM's Python interpreter
            (the report is written first, with `bit_exact: false`).
        FileNotFoundError: a tool, the TFLM tree, a kit file or the deploy folder is
            missing (one line saying which); all are checked before anything is built.

    Example:
    >>> report = egt.export.run_firmware("deploy/")  # doctest: +SKIP
    >>> report["speedup"], report["flash_bytes"]  # doctest: +SKIP
    """
    from keras_egt.export import c_sources
    from keras_egt.export import runtime as rt

    started = time.time()
    deploy_dir = os.fspath(deploy_dir)
    if arena not in _ARENA_DESIGNS:
        raise ValueError(f"arena must be one of {list(_ARENA_DESIGNS)}: pass 'per_segment' "
                         f"(allocated once) or 'shared'. Received: arena={arena!r}")
    # Everything the build needs is checked before any work: a missing piece is one
    # line now, not an error after minutes of compiling.
    tflm = find_tflm(tflm_dir)
    tools = find_toolchain()
    for parts in _KIT_FILES:
        _kit_file(*parts)
    runner = rt.load_cascade(deploy_dir, runtime="tflm")
    manifest = runner.manifest
    segments = manifest["segments"]
    num_segments = len(segments)
    q = _load_samples(runner, x)
    n = len(q)
    if verbose:
        print(f"TFLM Python interpreter on {n} samples ...", flush=True)
    ref_labels, ref_exits = runner.predict(q)
    ref_all = runner.run_segments(q)  # (segments, n, classes) int8
    build = tflm_library(resolver_methods(manifest), tflm, cache_dir, verbose=verbose)

    model_bytes = sum(s["flash_bytes"] for s in segments)
    model_in_psram = model_bytes > FLASH_BYTES - (1 << 20)  # leave 1 MB for code
    input_bytes = int(np.prod(q.shape[1:]))
    room = PSRAM_BYTES - (model_bytes if model_in_psram else 0) - (1 << 16)
    per_image = samples_per_image or max(1, room // input_bytes)
    if per_image * input_bytes > room:
        raise ValueError(f"samples_per_image={per_image} needs {per_image * input_bytes} bytes;"
                         f" the emulator holds {room} beside the model.")
    macs = sum(int(s.get("macs") or 0) for s in segments)
    if timeout is None:  # ~2 instructions per MAC, two runs, >= 20 emulated MIPS on a busy host
        timeout = 300 + 20 * max(macs, 1) * min(n, per_image) / 1e8

    with tempfile.TemporaryDirectory(prefix="keras_egt_firmware_") as work:
        work = Path(work)
        for seg in segments:
            shutil.copyfile(os.path.join(deploy_dir, seg["file"]), work / seg["file"])
        c_sources.write_c_sources(work, manifest)
        builder = _Builder(work, tflm, build["library"], tools, model_in_psram)

        # 1. The target's arena per segment, in a generous arena.
        host_arena = max(s["arena_bytes"] for s in segments)
        probe_bytes = 2 * host_arena + 65536
        elf, _ = builder.image("probe", probe_bytes, q[:1], probe=True)
        probe = _parse(builder.run(elf, timeout), num_segments)
        target_arenas = []
        for k in range(1, num_segments + 1):
            smallest, used, rc = probe["arena"].get(k, [0, 0, -1])
            if smallest == 0 or rc != 0:
                raise RuntimeError(
                    f"segment {k} does not allocate and run on the target even in a "
                    f"{probe_bytes}-byte arena (status {rc}): "
                    + " ".join(probe["tflm_log"][-3:]))
            target_arenas.append(smallest)
        # Regions start 16-aligned, as the probe's arena did (TFLM aligns its start).
        regions = [-(-a // 16) * 16 for a in target_arenas]
        layout = regions if arena == "per_segment" else max(target_arenas)
        arena_bytes = sum(regions) if arena == "per_segment" else max(target_arenas)
        if verbose:
            print(f"Target arena per segment {target_arenas} (host: "
                  f"{[s['arena_bytes'] for s in segments]}); {_ARENA_DESIGNS[arena]}: "
                  f"{arena_bytes} bytes.", flush=True)

        # 2. The firmware in that shared arena, on every sample.
        records = {"c": [], "f": []}
        stack = heap = 0
        used, boot, resolver = {}, 0, []
        sizes = None
        for start in range(0, n, per_image):
            chunk = q[start : start + per_image]
            elf, map_file = builder.image("firmware", layout, chunk)
            if verbose:
                print(f"Running samples {start}-{start + len(chunk) - 1} under "
                      f"qemu-system-arm -M {QEMU_MACHINE} ...", flush=True)
            parsed = _parse(builder.run(elf, timeout), num_segments)
            for tag in ("c", "f"):
                if len(parsed[tag]) != len(chunk):
                    raise RuntimeError(f"the firmware reported {len(parsed[tag])} of "
                                       f"{len(chunk)} samples.")
                records[tag] += parsed[tag]
            stack, heap = max(stack, parsed["stack"]), max(heap, parsed["heap"])
            used.update(parsed["used"])
            boot, resolver = parsed.get("boot", boot), parsed.get("resolver", resolver)
            if sizes is None:
                sizes = _sizes(tools, elf, map_file, parsed, arena_bytes)
        sizes["ram_split"]["stack"], sizes["ram_split"]["heap"] = stack, heap
        sizes["ram_bytes"] = int(sum(sizes["ram_split"].values()))

    overhead = probe["overhead"]
    c = np.array(records["c"], np.int64)
    f = np.array(records["f"], np.int64)
    labels, exits, confidence = c[:, 2], c[:, 3] - 1, c[:, 4]
    final_labels, final_confidence = f[:, 2], f[:, 3]
    rows = np.arange(n)
    ref_final = ref_all[-1]
    ref_confidence = ref_all[ref_exits, rows].max(-1)
    cascade_instr = _instructions(c[:, 5], 1, overhead)
    final_instr = _instructions(f[:, 4], 1, overhead)
    pairs = f[:, 5:].reshape(n, num_segments, 2)
    setup = _instructions(pairs[:, :, 0], 2, overhead)
    invoke = _instructions(pairs[:, :, 1], 1, overhead)
    per_segment = setup + invoke
    mismatch = np.flatnonzero(
        (labels != ref_labels) | (exits != ref_exits) | (confidence != ref_confidence)
        | (final_labels != np.argmax(ref_final, axis=-1)) | (final_confidence != ref_final.max(-1)))
    with_exit = float(np.mean(cascade_instr))
    final_only = float(np.mean(final_instr))
    report = {
        "deploy_dir": os.path.abspath(deploy_dir),
        "samples": int(n),
        "samples_per_image": int(min(per_image, n)),  # sizes are the first image's
        "images": int(math.ceil(n / per_image)),
        "num_segments": num_segments,
        "bit_exact": bool(len(mismatch) == 0),
        "reference": "keras_egt.export.load_cascade(deploy_dir, runtime='tflm'): predict "
                     "(labels, exits) and run_segments (int8 confidences, final-only "
                     "labels), TFLM's Python interpreter with reference kernels",
        "labels": labels.tolist(),
        "exits": exits.tolist(),
        "exit_counts": np.bincount(exits, minlength=num_segments).tolist(),
        "confidences_int8": confidence.tolist(),
        "final_only_labels": final_labels.tolist(),
        "mismatches": mismatch.tolist()[:50],
        **sizes,
        "arena_design": arena,
        "arena_bytes": int(arena_bytes),
        "arena_bytes_shared_design": int(max(target_arenas)),
        "arena_bytes_per_segment_design": int(sum(regions)),
        "resolver_builtin_codes": resolver,
        "boot_setup_instructions": int(round(float(_instructions(boot, 1, overhead)))) if boot else 0,
        "arena_bytes_per_segment_target": target_arenas,
        "arena_bytes_per_segment_host": [int(s["arena_bytes"]) for s in segments],
        "arena_used_bytes_per_segment": [int(used.get(k, 0)) for k in range(1, num_segments + 1)],
        "model_region": "psram (does not fit the 4 MB code memory)" if model_in_psram else "flash",
        "instructions_per_segment": [int(round(v)) for v in per_segment.mean(axis=0)],
        "invoke_instructions_per_segment": [int(round(v)) for v in invoke.mean(axis=0)],
        "setup_instructions_per_segment": [int(round(v)) for v in setup.mean(axis=0)],
        "instructions_with_early_exit": int(round(with_exit)),
        "instructions_final_only": int(round(final_only)),
        "instructions_per_sample": [int(round(v)) for v in cascade_instr],
        "speedup": final_only / with_exit,
        "estimated_ms_at_64mhz": {
            "clock_hz": CLOCK_HZ,
            "with_early_exit": 1e3 * with_exit / CLOCK_HZ,
            "final_only": 1e3 * final_only / CLOCK_HZ,
            "basis": "instruction-count estimate (one instruction per cycle at 64 MHz), "
                     "not cycle-accurate: a real Cortex-M4 takes more cycles for loads, "
                     "multiplies and taken branches, and flash wait states",
        },
        "measurement": {
            "emulator": f"qemu-system-arm -M {QEMU_MACHINE} -icount shift={ICOUNT_SHIFT}",
            "clock": f"SysTick on the {SYSTICK_HZ} Hz core clock; instructions = ticks x "
                     f"{1e9 / SYSTICK_HZ:g} / {2 ** ICOUNT_SHIFT}",
            "calibration_error_instructions": probe["calibration_error"],
            "timer_overhead_ticks": overhead,
            "setup": _ARENA_DESIGNS[arena] + "; per segment per sample: " + (
                "input and output copies" if arena == "per_segment" else
                "GetModel, MicroInterpreter, AllocateTensors, input and output copies"),
        },
        "toolchain": {"gcc": _version(tools["gcc"]), "qemu": _version(tools["qemu"]),
                      "tflm": str(tflm)},
        "tflm_library": {"path": str(build["library"]), "objects": build["total"],
                         "compiled_now": build["compiled"], "seconds": build["seconds"],
                         "log": str(build["log"])},
        "seconds": time.time() - started,
    }
    if output is not False:
        path = os.path.join(deploy_dir, FIRMWARE_JSON) if output is None else os.fspath(output)
        atomic.write_text(path, json.dumps(report, indent=1) + "\n")
        report["path"] = os.path.abspath(path)
    if mismatch.size:
        i = int(mismatch[0])
        raise FirmwareMismatchError(
            f"the emulated firmware differs from TFLM's Python interpreter on "
            f"{mismatch.size} of {n} samples; first, sample {i}: firmware label "
            f"{labels[i]} exit {exits[i] + 1} (final-only label {final_labels[i]}), Python "
            f"label {ref_labels[i]} exit {ref_exits[i] + 1} (final-only label "
            f"{int(np.argmax(ref_final[i]))}).")
    return report


def format_firmware_report(report):
    """A short markdown summary of a `run_firmware` report."""
    est = report["estimated_ms_at_64mhz"]
    fs, rs = report["flash_split"], report["ram_split"]
    kib = lambda b: f"{b / 1024:.1f} KiB"  # noqa: E731
    lines = [
        f"### Firmware on an emulated Cortex-M4 ({report['measurement']['emulator']})",
        "",
        f"{report['samples']} samples: labels and exits "
        + ("bit-exact with" if report["bit_exact"] else "DIFFER from")
        + " TFLM's Python interpreter; samples per exit "
        + ", ".join(f"{k + 1}: {c}" for k, c in enumerate(report["exit_counts"])) + ".",
        "",
        f"- flash {report['flash_bytes']:,} bytes ({kib(report['flash_bytes'])}): model "
        f"{kib(fs['model'])}, TFLM runtime {kib(fs['tflm'])}, kit {fs['kit']:,} B, harness "
        f"{kib(fs['harness'])}, C library + startup {kib(fs['system'])}"
        + ("" if report["model_region"] == "flash" else f"; model in {report['model_region']}"),
        f"- RAM {report['ram_bytes']:,} bytes ({kib(report['ram_bytes'])}): arena "
        f"{kib(rs['arena'])} ({report['arena_design'].replace('_', ' ')}; a shared arena: "
        f"{kib(report['arena_bytes_shared_design'])}; per segment on target "
        f"{report['arena_bytes_per_segment_target']}, host {report['arena_bytes_per_segment_host']}), "
        f"stack peak {kib(rs['stack'])}, heap {kib(rs['heap'])}, other data+bss "
        f"{kib(sum(v for k, v in rs.items() if k not in ('arena', 'stack', 'heap')))}",
        "- instructions per segment: " + ", ".join(f"{v:,}" for v in report["instructions_per_segment"])
        + " (set-up and copies: " + ", ".join(f"{v:,}" for v in report["setup_instructions_per_segment"])
        + f"; once at boot: {report['boot_setup_instructions']:,})",
        f"- per sample: {report['instructions_with_early_exit']:,} with early exit, "
        f"{report['instructions_final_only']:,} straight through (final exit only): speedup "
        f"{report['speedup']:.2f}x",
        f"- estimated at {est['clock_hz'] / 1e6:g} MHz ({est['basis'].split(' (')[0]}): "
        f"{est['with_early_exit']:.2f} ms with early exit, {est['final_only']:.2f} ms without",
    ]
    return "\n".join(lines)
