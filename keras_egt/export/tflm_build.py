"""A TFLM library of only the cascade's ops, compiled from Python with progress and resume.

`build_library(ops)` compiles the TFLM core plus the kernels of the given builtin ops
(the CMSIS-NN versions where TFLM has them) for Cortex-M4, and archives them. The compile
commands are TFLM's own: `make -n ... microlite` (dry run; TFLM's Makefile with
`TARGET=cortex_m_generic TARGET_ARCH=cortex-m4 OPTIMIZED_KERNEL_DIR=cmsis_nn`) lists
every object's exact command line, and this module runs the subset the ops need:

* seeds: what the kit's harness calls (`micro_interpreter.cc`, the op resolver's
  `flatbuffer_conversions.cc` and base, the debug-log callback) and, per op, the kernel
  file that defines the `Register_<OP>()` the op resolver's `Add<Op>()` calls, with its
  `<kernel>_common.cc`;
* closure: the symbols the compiled objects leave undefined (`nm`) are looked up in
  the sources not yet chosen (a definition at the start of a line, e.g. the CMSIS-NN
  function `arm_convolve_s8(`), which join the build, until nothing new is needed.

Objects compile in parallel (`os.cpu_count()` jobs; the progress bar counts objects,
plus one last step for the archive), each to a temporary name renamed
when complete, into the cache (`$KERAS_EGT_CACHE_DIR`, default `~/.cache/keras_egt`)
under a key of the TFLM sources, the compiler version and this recipe; the archive is
keyed further by the compile flags and the op set. Ctrl-C or SIGTERM kills every
compiler's process group and keeps the finished objects: the next run compiles only
the rest.
"""

import hashlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from keras_egt import atomic

_RECIPE_VERSION = "2"
_TESTED_COMMIT = "90b983c2b3f1480642e040bbd2ddb37b998f3424"  # bump when the selection or compile recipe changes
_MAKE_TARGET = ["TARGET=cortex_m_generic", "TARGET_ARCH=cortex-m4", "OPTIMIZED_KERNEL_DIR=cmsis_nn"]
_MAKEFILE = "tensorflow/lite/micro/tools/make/Makefile"
_RESOLVER_HEADER = "tensorflow/lite/micro/micro_mutable_op_resolver.h"
_KERNELS = "tensorflow/lite/micro/kernels/"
_DOWNLOADS = "tensorflow/lite/micro/tools/make/downloads/"  # CMSIS-NN and other third parties
# What the kit's harness calls besides the ops' kernels: the interpreter, the Parse*
# functions of the op resolver, the resolver base and the debug-log callback. The
# closure adds what these reference.
_ROOTS = ("tensorflow/lite/micro/micro_interpreter.cc",
          "tensorflow/lite/core/api/flatbuffer_conversions.cc",
          "tensorflow/lite/micro/micro_op_resolver.cc",
          "tensorflow/lite/micro/cortex_m_generic/debug_log.cc")
# TFLM's own test scaffolding: the closure takes a definition from elsewhere first.
_TEST_ONLY = ("fake_micro_context", "test_helpers", "test_helper_custom_ops", "mock_micro_graph",
              "recording_micro_allocator", "recording_single_arena_buffer_allocator",
              "kernel_runner")


class BuildInterrupted(KeyboardInterrupt):
    """The build was stopped (Ctrl-C or SIGTERM); the finished objects are kept."""


def _tool(gcc, name):
    """The binutils tool `name` beside the Arm gcc (`arm-none-eabi-<name>`)."""
    return str(Path(gcc).with_name(f"arm-none-eabi-{name}"))


def _version(tool):
    out = subprocess.run([tool, "--version"], capture_output=True, text=True)
    text = out.stdout or out.stderr
    return text.splitlines()[0].strip() if text else "?"


def tree_key(tflm, gcc):
    """sha256 of the recipe, the compiler version and every TFLM file's path and content.

    Args:
        tflm: the TFLM source tree.
        gcc: the Arm gcc (its `--version` is part of the key).

    Returns:
        The hex digest.

    Example:
    >>> tree_key("tflite-micro", "/usr/bin/arm-none-eabi-gcc")[:8]  # doctest: +SKIP
    """
    digest = hashlib.sha256(f"{_RECIPE_VERSION} {_version(gcc)} {' '.join(_MAKE_TARGET)}".encode())
    for root, dirs, files in os.walk(tflm):
        dirs[:] = sorted(d for d in dirs if d != "gen")
        for name in sorted(files):
            path = os.path.join(root, name)
            if os.path.islink(path):
                continue
            with open(path, "rb") as f:
                content = hashlib.sha256(f.read()).digest()
            digest.update(os.path.relpath(path, tflm).encode() + b"\0" + content)
    return digest.hexdigest()


def compile_commands(tflm, gcc, log=None):
    """Every microlite object's compile command, from a dry run of TFLM's Makefile.

    The dry run's generated files go to a temporary folder (GENDIR), so the tree is
    only read.

    Args:
        tflm: the TFLM source tree.
        gcc: the Arm gcc; its folder is the toolchain the commands name.
        log: an open text file for make's stderr, or None.

    Returns:
        A list of dicts: `source` and `object` (relative paths) and `argv` (the command,
        run in the tree, without its `-o` and dependency-file options).

    Raises:
        RuntimeError: the dry run failed or listed no objects.

    Example:
    >>> len(compile_commands("tflite-micro", "/usr/bin/arm-none-eabi-gcc"))  # doctest: +SKIP
    315
    """
    with tempfile.TemporaryDirectory(prefix="keras_egt_tflm_dry_") as gendir:
        command = ["make", "-n", "-f", _MAKEFILE, *_MAKE_TARGET,
                   f"TARGET_TOOLCHAIN_ROOT={Path(gcc).parent}{os.sep}", f"GENDIR={gendir}/",
                   "microlite"]
        # Some example Makefile.inc files call Python: this interpreter's folder first.
        env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep
                   + os.environ.get("PATH", ""))
        process = subprocess.run(command, cwd=tflm, env=env, capture_output=True, text=True,
                                 stdin=subprocess.DEVNULL)
        if log is not None:
            log.write(process.stderr)
        commands = []
        prefix = os.path.join(gendir, "obj") + os.sep
        for line in process.stdout.splitlines():
            argv = shlex.split(line) if " -c " in line else []
            if not argv or "-o" not in argv or not argv[0].endswith(("gcc", "g++")):
                continue
            out = argv[argv.index("-o") + 1]
            source = argv[argv.index("-c") + 1]
            argv = [a for i, a in enumerate(argv)
                    if a not in ("-MD", "-MMD") and a != "-o" and (i == 0 or argv[i - 1] != "-o")]
            commands.append({"source": source, "object": os.path.relpath(out, prefix), "argv": argv})
    if process.returncode != 0 or not commands:
        raise RuntimeError(f"listing TFLM's compile commands failed (`{' '.join(command)}` in "
                           f"{tflm}): " + " ".join(process.stderr.strip().splitlines()[-3:]))
    return commands


_DEFINITION = r"^[A-Za-z_][^;\n]*\b{}\s*\([^;{{}}\n]*(?:\{{|,|$)"


_MEMBER = r"^[A-Za-z_~][^;\n]*\b{}::~?\w+\s*\("


def _defines(text, name):
    """Whether a source's text defines function `name`, or a member of class `name::`
    (a definition at the start of a line)."""
    if name.endswith("::"):
        return re.search(_MEMBER.format(re.escape(name[:-2])), text, re.M) is not None
    return re.search(_DEFINITION.format(re.escape(name)), text, re.M) is not None


def registrations(tflm, methods):
    """The `Register_*` function each op resolver method calls (from TFLM's header).

    Args:
        tflm: the TFLM source tree.
        methods: resolver method names without `Add`, e.g. `["Conv2D", "Mean"]`.

    Returns:
        A dict method -> registration function name, e.g. `{"Conv2D": "Register_CONV_2D"}`.

    Raises:
        ValueError: a method is not in TFLM's `MicroMutableOpResolver`.

    Example:
    >>> registrations("tflite-micro", ["Mean"])  # doctest: +SKIP
    {'Mean': 'Register_MEAN'}
    """
    header = (Path(tflm) / _RESOLVER_HEADER).read_text()
    found = dict(re.findall(r"TfLiteStatus\s+Add(\w+)\(\s*const\s+TFLMRegistration&\s+registration"
                            r"\s*=\s*(?:tflite::)?(Register_\w+)\(\)", header))
    missing = [m for m in methods if m not in found]
    if missing:
        raise ValueError(f"TFLM's MicroMutableOpResolver has no Add{missing[0]}(): this TFLM tree "
                         f"cannot run the op; export with ops TFLM supports or use another tree. "
                         f"Received: methods={list(methods)}")
    return {m: found[m] for m in methods}


def seed_sources(commands, tflm, methods):
    """The sources compiled first: the harness's entry points and the kernels of the ops.

    Args:
        commands: `compile_commands(...)`.
        tflm: the TFLM source tree.
        methods: the op resolver methods (without `Add`) the firmware registers.

    Returns:
        The list of source paths (relative to the tree), in the commands' order.

    Raises:
        ValueError: no kernel source defines an op's registration function.
    """
    sources = [c["source"] for c in commands]
    missing = [r for r in _ROOTS if r not in sources]
    if missing:
        raise ValueError(f"this TFLM tree's microlite has no {missing[0]}: keras-egt is tested "
                         f"with TFLM commit {_TESTED_COMMIT}; use that tree. Received: tflm={tflm}")
    kernels = [s for s in sources if _KERNELS in s]
    chosen = set(_ROOTS)
    for method, function in registrations(tflm, methods).items():
        defining = [s for s in kernels if _defines((Path(tflm) / s).read_text(errors="replace"),
                                                   function)]
        if not defining:
            raise ValueError(f"no TFLM kernel source defines {function}() for Add{method}(): the "
                             f"tree is incomplete; use a complete TFLM tree. Received: tflm={tflm}")
        for source in defining:
            chosen.add(source)
            common = f"{_KERNELS}{Path(source).stem}_common.cc"
            if common in sources:
                chosen.add(common)
    return [s for s in sources if s in chosen]


def _nm_symbols(nm, objects):
    """(defined, undefined) external symbol names of the objects."""
    defined, undefined = set(), set()
    if not objects:
        return defined, undefined
    out = subprocess.run([nm, "-g", *map(str, objects)], capture_output=True, text=True,
                         check=True).stdout
    for line in out.splitlines():
        words = line.split()
        if len(words) == 2 and words[0] == "U":
            undefined.add(words[1])
        elif len(words) == 3 and words[1] not in ("U", "w", "v"):
            defined.add(words[2])
    return defined, undefined


def _base_name(demangled):
    """`tflite::micro::GetTensorShape(TfLiteEvalTensor const*)` -> `GetTensorShape`;
    `vtable for tflite::MicroGraph` -> `MicroGraph::` (a class: its members' file)."""
    for prefix in ("vtable for ", "typeinfo for ", "VTT for "):
        if demangled.startswith(prefix):
            name = _base_name(demangled[len(prefix):] + "()")
            return name + "::" if name else None
    if demangled.startswith("guard variable") or "operator" in demangled:
        return None
    head = demangled.split("(", 1)[0]
    while head.endswith(">"):  # template arguments
        depth, i = 0, len(head) - 1
        for i in range(len(head) - 1, -1, -1):
            depth += {">": 1, "<": -1}.get(head[i], 0)
            if depth == 0:
                break
        head = head[:i]
    name = head.rsplit("::", 1)[-1].strip()
    return name if re.fullmatch(r"[A-Za-z_]\w*", name) else None


def missing_sources(unresolved, candidates, tflm, cxxfilt):
    """The candidate sources that define the unresolved symbols.

    Args:
        unresolved: mangled symbol names no compiled object defines.
        candidates: source paths not compiled yet.
        tflm: the TFLM source tree.
        cxxfilt: the `c++filt` demangler.

    Returns:
        The sources to add (a set; empty when the rest is for the C library).
    """
    unresolved = sorted(unresolved)
    if not unresolved or not candidates:
        return set()
    out = subprocess.run([cxxfilt], input="\n".join(unresolved), capture_output=True,
                         text=True, check=True).stdout.splitlines()
    names = {n for n in map(_base_name, out) if n and not n.startswith("__")}
    texts = {s: (Path(tflm) / s).read_text(errors="replace") for s in candidates}
    hits = {}
    for name in names:
        # CMSIS-NN keeps one function per file, named after it.
        by_stem = [s for s in candidates if s.endswith(".c") and Path(s).stem == name]
        for source in by_stem or [s for s, text in texts.items() if _defines(text, name)]:
            hits.setdefault(source, set()).add(name)
    # Greedy cover: the fewest files that define every name (kernel_util.cc rather than
    # a test helper or a kernel with a private function of the same name).
    order = {s: (Path(s).stem in _TEST_ONLY, i) for i, s in enumerate(candidates)}
    add, left = set(), set().union(*hits.values()) if hits else set()
    while left:
        best = min(hits, key=lambda s: (-len(hits[s] & left), order[s]))
        add.add(best)
        left -= hits.pop(best)
    return add


class _Compiler:
    """Runs compile commands in parallel, each compiler in its own process group."""

    def __init__(self, tflm, obj_dir, jobs, log, progbar=None):
        self.tflm, self.obj_dir, self.jobs, self.log = str(tflm), Path(obj_dir), jobs, log
        self.progbar, self.done, self.total, self.compiled = progbar, 0, 0, 0
        self.running = {}  # Popen -> (command, temporary object, stderr file)

    def object_path(self, command):
        return self.obj_dir / command["object"]

    def add_target(self, n):
        self.total += n
        if self.progbar is not None:
            # +1: the archive, so the bar only completes when the library exists.
            self.progbar.target = self.total + 1

    def tick(self):
        self.done += 1
        if self.progbar is not None:
            self.progbar.update(self.done)

    def run(self, commands):
        """Compiles the commands whose objects are not in the cache yet."""
        self.add_target(len(commands))
        pending = []
        for command in commands:
            if self.object_path(command).is_file():
                self.tick()  # built by an earlier (maybe interrupted) run
            else:
                pending.append(command)
        pending.reverse()
        while pending or self.running:
            while pending and len(self.running) < self.jobs:
                self._start(pending.pop())
            self._reap()

    def _start(self, command):
        out = self.object_path(command)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}.o")
        err = tempfile.TemporaryFile(mode="w+")
        process = subprocess.Popen([*command["argv"], "-o", str(tmp)], cwd=self.tflm,
                                   stdout=err, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
        self.running[process] = (command, tmp, err)

    def _reap(self):
        time.sleep(0.02)
        for process in [p for p in self.running if p.poll() is not None]:
            command, tmp, err = self.running.pop(process)
            err.seek(0)
            text = err.read()
            err.close()
            self.log.write(f"$ {shlex.join(command['argv'])}\n{text}")
            if process.returncode != 0:
                tmp.unlink(missing_ok=True)
                raise RuntimeError(f"compiling {command['source']} for TFLM failed (see the "
                                   f"log {self.log.name}):\n" + "\n".join(text.splitlines()[-15:]))
            os.replace(tmp, self.object_path(command))  # complete objects only
            self.compiled += 1
            self.tick()

    def kill(self):
        """Kills every running compiler (its whole process group) and drops its output."""
        for process, (_, tmp, err) in list(self.running.items()):
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()
            tmp.unlink(missing_ok=True)
            err.close()
        self.running.clear()
        # A compile reaped but not yet renamed when the interrupt came: drop its output.
        for tmp in self.obj_dir.rglob(f".*.tmp-{os.getpid()}.o"):
            tmp.unlink(missing_ok=True)


class _TermAsInterrupt:
    """Within the block, SIGTERM raises KeyboardInterrupt (main thread only)."""

    def __enter__(self):
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._raise)
        return self

    @staticmethod
    def _raise(signum, frame):
        raise KeyboardInterrupt

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)
        return False


def _ops_key(commands_by_source, sources, methods):
    digest = hashlib.sha256(" ".join(sorted(methods)).encode())
    for source in sorted(sources):
        digest.update(shlex.join(commands_by_source[source]["argv"]).encode() + b"\n")
    return digest.hexdigest()[:16]


def build_library(tflm, methods, cache_root, gcc, verbose=False):
    """Builds (once) a TFLM archive of the core and the given ops' kernels.

    Args:
        tflm: the TFLM source tree (only read).
        methods: the op resolver methods without `Add` (e.g. `["Conv2D", "Softmax"]`).
        cache_root: the cache folder (objects and archives live under `tflm-<key>/`).
        gcc: the Arm gcc.
        verbose: print the log's path and a progress bar of objects compiled.

    Returns:
        A dict: `library` (the archive's Path), `sources` and their `objects`, `compiled`
        (objects compiled by this run),
        `total`, `log`, `seconds`, `key`.

    Raises:
        BuildInterrupted: Ctrl-C or SIGTERM; the compilers are killed, the finished
            objects kept (the next run resumes).
        RuntimeError: a compile, the dry run or the archive failed (with the log's tail).

    Example:
    >>> build_library("tflite-micro", ["Conv2D"], "~/.cache/keras_egt", gcc)  # doctest: +SKIP
    """
    started = time.time()
    methods = sorted(set(methods))
    key = tree_key(tflm, gcc)[:20]
    home = Path(cache_root) / f"tflm-{key}"
    home.mkdir(parents=True, exist_ok=True)
    log_path = home / "build.log"
    with open(log_path, "a") as log, _TermAsInterrupt():
        log.write(f"\n== {time.strftime('%Y-%m-%d %H:%M:%S')} ops {' '.join(methods)}\n")
        commands = _cached_commands(home, tflm, gcc, log)
        by_source = {c["source"]: c for c in commands}
        progbar = None
        if verbose:
            import keras

            print(f"Building TFLM for ops {', '.join(methods)} (core + their kernels, "
                  f"{os.cpu_count() or 1} jobs); log: {log_path}", flush=True)
            progbar = keras.utils.Progbar(1, unit_name="object")
        compiler = _Compiler(tflm, home / "obj", os.cpu_count() or 1, log, progbar)
        # A build of these ops that got this far before knows the full list up front.
        selection = home / f"selection-{hashlib.sha256(' '.join(methods).encode()).hexdigest()[:16]}.json"
        chosen = seed_sources(commands, tflm, methods)
        if selection.is_file():
            known = [s for s in json.loads(selection.read_text()) if s in by_source]
            chosen += [s for s in known if s not in chosen]
        try:
            batch = chosen
            while batch:
                compiler.run([by_source[s] for s in batch])
                objects = [compiler.object_path(by_source[s]) for s in chosen]
                defined, undefined = _nm_symbols(_tool(gcc, "nm"), objects)
                rest = [s for s in by_source if s not in chosen]
                batch = sorted(missing_sources(undefined - defined, rest, tflm,
                                               _tool(gcc, "c++filt")))
                chosen += batch
        except KeyboardInterrupt:
            compiler.kill()
            if progbar is not None:
                print(flush=True)  # end the bar's line
            log.write(f"interrupted: {compiler.done} of {compiler.total} objects kept\n")
            raise BuildInterrupted(
                f"TFLM build interrupted: {compiler.done} of {compiler.total} objects are kept in "
                f"{home / 'obj'}; run the command again to resume (log: {log_path}).") from None
        except BaseException:
            compiler.kill()  # a failed compile: the others stop too
            raise
        atomic.write_text(selection, json.dumps(chosen, indent=0))
        library = home / "lib" / f"libtflm-{_ops_key(by_source, chosen, methods)}.a"
        if not library.is_file():
            _archive(gcc, library, [compiler.object_path(by_source[s]) for s in chosen])
        compiler.tick()
        seconds = time.time() - started
        log.write(f"library {library}: {len(chosen)} objects, {compiler.compiled} compiled "
                  f"in {seconds:.1f} s\n")
    return {"library": library, "sources": chosen, "compiled": compiler.compiled,
            "objects": [compiler.object_path(by_source[s]) for s in chosen],
            "total": len(chosen), "log": log_path, "seconds": seconds, "key": key}


def _cached_commands(home, tflm, gcc, log):
    """The compile commands, from the cache or a dry run (then cached)."""
    path = home / "commands.json"
    if path.is_file():
        return json.loads(path.read_text())
    commands = compile_commands(tflm, gcc, log)
    atomic.write_text(path, json.dumps(commands, indent=0))
    return commands


def _archive(gcc, library, objects):
    """`ar` the objects into `library`, written under a temporary name, then renamed."""
    library.parent.mkdir(parents=True, exist_ok=True)
    tmp = library.with_name(f".{library.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    process = subprocess.run([_tool(gcc, "ar"), "rcs", str(tmp), *map(str, objects)],
                             capture_output=True, text=True)
    if process.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"archiving the TFLM library failed: {process.stderr.strip()[-500:]}")
    os.replace(tmp, library)
