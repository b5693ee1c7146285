"""TFLM's arena: measured, and every (file, arena) pair tried in a child process first.

TFLM's Python interpreter can crash the process (a segmentation fault, not an
exception) when the arena is too small or the flatbuffer is malformed, so every
allocation whose outcome is not known yet runs in `keras_egt/export/_arena_probe.py`,
a child process; `keras_egt.export.runtime.interpreters.tflm_interpreter` then hands
TFLM only bytes that child verified and ran in that arena (`probed`).
"""

import json
import os
import subprocess
import sys
import tempfile
import threading

from keras_egt.export import _deps, _lifetime
from keras_egt.export.manifest import sha256

# Temporary folders of tflm_arena_bytes, tagged with the pid (see _lifetime.remove_stale).
ARENA_TMP_PATTERN = r"keras_egt_arena_(\d+)_.*"
# The child script stays next to `_lifetime`, which it imports as its sibling (it
# imports no keras_egt, so that it starts fast).
_SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "_arena_probe.py")

# (sha256, arena bytes) pairs that TFLM allocated and ran in a child process.
_PROBED = set()


class _Prober:
    """A long-lived `_arena_probe.py --serve` child (started on first use, restarted
    after a crash), so that checking a segment costs no process start."""

    def __init__(self):
        self.process = None
        self.lock = threading.Lock()

    def run(self, job):
        """Sends one job line; returns (its output lines, the exit code if it died, stderr)."""
        with self.lock:
            if self.process is None or self.process.poll() is not None:
                self.process = subprocess.Popen(
                    [sys.executable, _SCRIPT, "--serve"], stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1,
                    env=_lifetime.child_env(),
                )
            process, lines = self.process, []
            try:
                process.stdin.write(job.replace("\n", " ") + "\n")
                process.stdin.flush()
                for line in process.stdout:
                    line = line.rstrip("\n")
                    if line == "done":
                        return lines, None, ""
                    lines.append(line)
            except (BrokenPipeError, OSError):
                pass
            returncode = process.wait()  # it died mid-job: a crash
            self.process = None
            return lines, returncode, ""


_PROBER = _Prober()


def probe_tflm(deploy_dir, segments, arenas):
    """Allocates and runs each segment in its arena in a child process first.

    TFLM's Python interpreter can crash the process (a segmentation fault, not an
    exception) when the arena is too small or the flatbuffer is malformed, and a
    manifest's `arena_bytes` or a segment file can be edited along with every digest
    (see `keras_egt.export.manifest`). So every (file, arena) pair is tried once per
    process in `_arena_probe.py --check`, which runs LiteRT's flatbuffer verifier on
    the very bytes it hands TFLM; a refusal or a crash there becomes an error here.

    Args:
        deploy_dir: the deploy folder.
        segments: manifest entries of the segments to check.
        arenas: the arena bytes of each.

    Raises:
        ValueError: an arena below the recorded one (before TFLM is touched).
        RuntimeError: naming the segment, the arena and what TFLM or the verifier said.
    """
    for seg, arena in zip(segments, arenas):
        if int(arena) < seg["arena_recorded_bytes"]:
            raise ValueError(
                f"segment {seg['index']}: an arena of {int(arena)} bytes is below the "
                f"{seg['arena_recorded_bytes']} bytes TFLM's recording allocator recorded for "
                "it; refusing before TFLM touches it."
            )
    # Absolute: the long-lived child keeps the working directory it was started in.
    _probe([{"path": os.path.abspath(os.path.join(os.fspath(deploy_dir), seg["file"])),
             "sha256": seg["sha256"], "arena": int(arena),
             "zero_point": seg["input"]["zero_point"], "shape": seg["input"]["shape"],
             "outputs": [seg["probabilities"]["output_index"]]
             + ([] if seg["features"] is None else [seg["features"]["output_index"]]),
             "where": f"segment {seg['index']} ({seg['file']})"}
            for seg, arena in zip(segments, arenas)])


def probe_tflm_file(path, arena_bytes, input_shape, input_zero_point=0, num_outputs=1,
                    where=None):
    """Checks one `.tflite` file on TFLM as `probe_tflm` checks a segment; returns its bytes.

    For a model outside a deploy folder (e.g. `final_only.tflite`): hand the bytes
    returned to `tflm_interpreter`, which takes no other.

    Args:
        path: the `.tflite` file.
        arena_bytes: the arena to allocate it in.
        input_shape: its int8 input's shape (with batch).
        input_zero_point: the input value fed for the check.
        num_outputs: its outputs (each one's details are read).
        where: what to call it in errors (default: the file's name).

    Returns:
        The file's bytes, verified and run by the probe child.

    Example:
    >>> data = probe_tflm_file("deploy/final_only.tflite", 20000, (1, 32, 32, 2), -1)
    >>> interpreter = tflm_interpreter(data, 20000, "the final-only model")
    """
    with open(path, "rb") as f:
        data = f.read()
    _probe([{"path": os.path.abspath(os.fspath(path)), "sha256": sha256(data),
             "arena": int(arena_bytes), "zero_point": int(input_zero_point),
             "shape": [int(d) for d in input_shape], "outputs": list(range(int(num_outputs))),
             "where": where or repr(os.path.basename(os.fspath(path)))}])
    return data


def _probe(items):
    """Runs the not yet probed `items` (job entries with a `where`) in the probe child."""
    todo = [item for item in items if (item["sha256"], item["arena"]) not in _PROBED]
    if not todo:
        return
    job = [dict(item, index=i) for i, item in enumerate(todo, 1)]
    lines, returncode, stderr = _PROBER.run(json.dumps(job))
    done = {}
    current = None
    for line in lines:
        word, _, rest = line.partition(" ")
        if word == "try":
            current = int(rest)
        elif word in ("ok", "fail"):
            index, _, message = rest.partition(" ")
            done[int(index)] = (word, message)
            current = None
        elif word == "error":
            stderr = rest
    for item in job:
        word, message = done.get(item["index"], (None, ""))
        where, arena = item["where"], item["arena"]
        if word == "ok":
            _PROBED.add((item["sha256"], arena))
            continue
        if word == "fail":
            raise RuntimeError(f"{where}: TFLM could not allocate or run it in {arena} bytes of "
                               f"arena: {message[-300:]}")
        crashed = returncode is not None and (current == item["index"] or returncode < 0)
        if crashed:
            raise RuntimeError(
                f"{where}: TFLM crashed (exit code {returncode}) allocating it in "
                f"{arena} bytes of arena; the manifest's arena_bytes is too small or the "
                "file is malformed. Refusing it; re-export the model."
            )
        raise RuntimeError(f"{where}: checking it on TFLM failed: "
                           + " ".join((stderr or "").split())[-400:])


def probed(digest, arena_bytes):
    """Whether the probe child verified and ran the bytes of sha256 `digest` in that arena.

    Args:
        digest: the bytes' sha256 (hex), as `keras_egt.export.manifest.sha256` gives it.
        arena_bytes: the arena size.

    Returns:
        True once `probe_tflm` or `probe_tflm_file` ran them in this process.

    Example:
    >>> probed(sha256(data), 20000)
    """
    return (digest, int(arena_bytes)) in _PROBED


def tflm_arena_bytes(model_bytes, input_shape, input_zero_point=0, return_recorded=False):
    """The TFLM arena a model needs, measured with TFLM's recording allocator.

    TFLM's Python interpreter allocates with the `RecordingMicroAllocator`; its
    "Arena allocation total" (head + tail once allocation is done) is read after one
    invocation. Allocation also needs temporary memory on the way (the memory
    planner's scratch), which that total leaves out and which dominates for small
    segments, so the result is the smallest arena in which TFLM actually allocates
    the model: the recorded total, raised by bisection where needed, and verified by
    running the model in exactly that many bytes. The probes run in a child process
    (`_arena_probe.py`): TFLM can crash, rather than fail, in an arena a few bytes
    too small. That child hands TFLM only bytes of the sha256 given and accepted by
    LiteRT's flatbuffer verifier, as every path to TFLM does (see `tflm_interpreter`).

    Args:
        model_bytes: the `.tflite` flatbuffer.
        input_shape: the int8 input's shape (with batch).
        input_zero_point: the input value fed for the check.
        return_recorded: also return the recording allocator's total.

    Returns:
        The arena bytes (host build; a 32-bit MCU needs about the same or slightly
        less, since TFLM's structs hold pointers), or `(bytes, recorded)`.

    Raises:
        ValueError: LiteRT's verifier refuses the flatbuffer (before TFLM reads it).
        RuntimeError: TFLM cannot allocate or run it.

    Example:
    >>> tflm_arena_bytes(model_bytes, (1, 32, 32, 2), input_zero_point=-1)
    """
    _deps.require("tflite_micro.python.tflite_micro.runtime", "measuring the TFLM arena")
    shape = ",".join(str(int(d)) for d in input_shape)
    low, high, recorded, verified = -1, 0, 0, None
    digest = sha256(model_bytes)  # the child verifies the bytes it reads (and LiteRT them)
    _lifetime.remove_stale(tempfile.gettempdir(), ARENA_TMP_PATTERN)
    with tempfile.TemporaryDirectory(prefix=f"keras_egt_arena_{os.getpid()}_") as work:
        path = os.path.join(work, "model.tflite")
        with open(path, "wb") as f:
            f.write(model_bytes)
        for _ in range(64):
            process = _lifetime.run_child(
                [sys.executable, _SCRIPT, path, digest, str(int(input_zero_point)), shape,
                 str(low), str(high), str(recorded)],
            )
            trying = None
            for line in process.stdout.split("\n"):
                word, _, value = line.partition(" ")
                if word == "invalid":
                    raise ValueError(f"measuring the TFLM arena: {value}")
                if word == "recorded":
                    recorded = int(value)
                elif word == "try":
                    trying = int(value)
                elif word == "ok":
                    high, trying = int(value), None
                elif word == "fail":
                    low, trying = max(low, int(value)), None
                elif word == "verified":
                    verified = int(value)
            if verified is not None:
                break
            if trying is None or process.returncode >= 0:
                raise RuntimeError(
                    "measuring the TFLM arena failed: "
                    + " ".join((process.stderr or process.stdout).split())[-400:]
                )
            low = max(low, trying)  # TFLM crashed: that arena is too small
    if verified is None:
        raise RuntimeError("measuring the TFLM arena did not converge.")
    return (verified, recorded) if return_recorded else verified

