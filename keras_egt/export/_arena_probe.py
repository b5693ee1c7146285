"""Finds the smallest TFLM arena of a model; run as a script by `runtime.tflm_arena_bytes`.

    python _arena_probe.py MODEL.tflite SHA256 ZERO_POINT SHAPE LOW HIGH RECORDED
    python _arena_probe.py --check JOB_JSON      (see `check`)
    python _arena_probe.py --serve               (see `serve`)

TFLM's Python interpreter can crash the process (not raise) when the arena is a few
bytes short, so every probe of a too-small arena runs here, in a child process that
reports each step on stdout: "recorded N", "try N", "ok N", "fail N", "verified N",
or "invalid MESSAGE" when the file is not the SHA256 given or not a valid flatbuffer.
LOW is a size known to fail (-1: none), HIGH one known to allocate (0: none),
RECORDED the recording allocator's total (0: measure it). Every path here hands TFLM
only bytes that `verified_bytes` returned. Imports no keras_egt (fast).
"""

import hashlib
import json
import os
import re
import sys
import tempfile

import numpy as np
from tflite_micro.python.tflite_micro import runtime as tflm


def say(*words):
    print(*words, flush=True)


def quiet(function):
    """Runs `function()` with fd 2 redirected; returns (result or exception, text)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            result = function()
        except RuntimeError as error:
            result = error
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        sink.seek(0)
        return result, sink.read().decode("utf-8", "replace")


def main(path, sha256, zero_point, shape, low, high, recorded):
    try:
        model = verified_bytes(path, sha256)
    except ValueError as error:
        say("invalid", " ".join(str(error).split()))
        raise SystemExit(1) from None
    sample = np.full(shape, zero_point, np.int8)

    def run(size, record=False):
        interpreter = tflm.Interpreter.from_bytes(model, arena_size=size)
        interpreter.set_input(sample, 0)
        interpreter.invoke()
        if record:
            interpreter.print_allocations()
        return True

    if recorded <= 0:
        size = max(1 << 20, 16 * len(model))
        while True:
            result, text = quiet(lambda size=size: run(size, record=True))
            if result is True:
                break
            if size >= 1 << 30:
                raise SystemExit(f"TFLM cannot run the model even in {size} bytes: {result}")
            size *= 4
        match = re.search(r"Arena allocation total (\d+) bytes", text)
        if not match:
            raise SystemExit("TFLM's recording allocator printed no arena total.")
        recorded = int(match.group(1))
        say("recorded", recorded)
    low = max(low, recorded - 1)

    def allocates(size):
        say("try", size)
        result, _ = quiet(lambda: tflm.Interpreter.from_bytes(model, arena_size=size))
        ok = not isinstance(result, Exception)
        say("ok" if ok else "fail", size)
        return ok

    if high <= 0:
        # After a crash above the recorded total (LOW raised to that size), keep
        # doubling from there: stepping one byte per child process never converges.
        high = low + 1 if low < recorded else 2 * low
        while not allocates(high):
            low, high = high, 2 * high
    while high - low > 1:
        middle = (low + high) // 2
        if allocates(middle):
            high = middle
        else:
            low = middle
    result, text = quiet(lambda: run(high))
    if result is not True:
        raise SystemExit(f"TFLM allocates the model in {high} bytes but fails to run it: {result}")
    say("verified", high)


def verified_bytes(path, sha256):
    """The bytes of `path` if their SHA-256 is `sha256` and LiteRT's verifier accepts them.

    The parent checked the file against the manifest, but the file can be swapped
    between that check and this read, so the bytes TFLM will see are checked here.
    TFLM's Python interpreter runs no flatbuffer verifier (a stride of 0 or a weight
    buffer cut to 4 bytes reads out of bounds); LiteRT's interpreter verifies the
    flatbuffer and its ops' parameters when it builds and allocates, so it runs first.
    Raises ValueError (reported as "fail K ...") otherwise.
    """
    with open(path, "rb") as f:
        model = f.read()
    digest = hashlib.sha256(model).hexdigest()
    if digest != sha256:
        raise ValueError(f"{os.path.basename(path)!r} changed after it was checked (sha256 {digest[:16]}..., "
                         f"the manifest's {str(sha256)[:16]}...); refusing to run it. "
                         "Re-export the model.")
    try:
        from ai_edge_litert import interpreter as litert
    except ImportError:
        raise ValueError("no flatbuffer verifier: TFLM segments are verified by LiteRT "
                         "first; pip install ai-edge-litert.") from None
    try:
        interpreter = litert.Interpreter(
            model_content=model,
            experimental_op_resolver_type=litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as error:
        raise ValueError(f"{os.path.basename(path)!r} is not a valid TFLite flatbuffer (LiteRT's verifier: "
                         f"{' '.join(str(error).split())[:200]}); refusing it before TFLM "
                         "reads it. Re-export the model.") from None
    return model


def check(job):
    """`--check JOB`: allocate and run each {path, sha256, arena, zero_point, shape, index}
    of the JSON list JOB; says "try K", then "ok K" or "fail K message". A crash shows as
    the process's exit code after "try K". The file's bytes must match `sha256` and pass
    LiteRT's verifier (`verified_bytes`) before TFLM sees them."""
    for item in json.loads(job):
        say("try", item["index"])

        def run(item=item):
            model = verified_bytes(item["path"], item["sha256"])
            sample = np.full(tuple(item["shape"]), item["zero_point"], np.int8)
            interpreter = tflm.Interpreter.from_bytes(model, arena_size=int(item["arena"]))
            interpreter.get_input_details(0)
            for index in item.get("outputs", []):  # out of range may crash, not raise
                interpreter.get_output_details(index)
            interpreter.set_input(sample, 0)
            interpreter.invoke()
            return True

        try:
            result, text = quiet(run)
        except Exception as error:  # e.g. ValueError from a malformed model
            result, text = error, ""
        if result is True:
            say("ok", item["index"])
        else:
            message = " ".join(f"{result} {text}".split())[-300:]
            say("fail", item["index"], message)


def serve():
    """`--serve`: one `check` job (a JSON line) per line of stdin, each answered by its
    lines and "done"; exits at EOF (the parent has gone)."""
    for line in sys.stdin:
        try:
            check(line)
        except Exception as error:  # a bad job: reported, the server goes on
            say("error", " ".join(str(error).split())[:300])
        say("done")


if __name__ == "__main__":
    import _lifetime  # this script's own folder is sys.path[0]; stdlib only, like this file

    _lifetime.die_with_parent()
    if sys.argv[1] == "--check":
        check(sys.argv[2])
        sys.exit(0)
    if sys.argv[1] == "--serve":
        serve()
        sys.exit(0)
    path, sha256, zero_point, shape, low, high, recorded = sys.argv[1:8]
    main(path, sha256, int(zero_point), tuple(int(d) for d in shape.split(",")), int(low),
         int(high), int(recorded))
