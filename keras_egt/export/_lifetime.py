"""Process lifetime for the export: children die with their parent, SIGTERM cleans up,
and what a killed run left behind is removed by the next one.

Temporary folders carry the pid of the process that made them
(`keras_egt_export_<pid>_*`, `.deploy.tmp-<pid>-*`); `remove_stale` deletes those
whose process is gone. SIGKILL cannot be caught, so this is how a later run cleans
up after it.
"""

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading

_PR_SET_PDEATHSIG = 1
_watched_parent = None  # the parent's pid, in a child that runs `watch_parent`


_PARENT_ENV = "KERAS_EGT_PARENT_PID"


def die_with_parent():
    """First call of every child of `run_child`: the kernel sends it SIGTERM when its
    parent dies (Linux), and it exits at once if the parent is already gone.

    Set by the child itself, not as `preexec_fn`: a `preexec_fn` makes `subprocess`
    fork the whole parent (JAX warns that forking its threads is unsafe), where a plain
    spawn does not.
    """
    expected = os.environ.pop(_PARENT_ENV, None)
    if not expected:
        return
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    # The parent may have died before prctl took effect: then we were re-parented.
    if os.getppid() != int(expected):
        os._exit(143)


def child_env(env=None):
    """The environment for a child of this process that calls `die_with_parent`."""
    return dict(os.environ if env is None else env, **{_PARENT_ENV: str(os.getpid())})


def run_child(argv, env=None, stdout=subprocess.PIPE, timeout=None):
    """`subprocess.run` for our children: text output captured, stdin a pipe the child may
    watch (EOF = the parent is gone), SIGTERM on the parent's death (Linux), and
    terminated (then killed) if this process is interrupted while waiting.

    Returns:
        A `subprocess.CompletedProcess`.
    """
    process = subprocess.Popen(
        argv, env=child_env(env), stdin=subprocess.PIPE, stdout=stdout, stderr=subprocess.PIPE,
        text=True,
    )
    # Not communicate(): it would close stdin, which a watching child reads as our death.
    texts = {}

    def drain(name, stream):
        texts[name] = stream.read()

    readers = [threading.Thread(target=drain, args=(name, stream), daemon=True)
               for name, stream in (("out", process.stdout), ("err", process.stderr))
               if stream is not None]
    for reader in readers:
        reader.start()
    try:
        process.wait(timeout=timeout)
        for reader in readers:
            reader.join()
    except BaseException:
        process.terminate()  # the child cleans up on SIGTERM
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        raise
    finally:
        with contextlib.suppress(OSError):
            process.stdin.close()
    return subprocess.CompletedProcess(argv, process.returncode, texts.get("out"),
                                       texts.get("err"))


class Terminated(SystemExit):
    """Raised in the main thread on SIGTERM, so that `finally` blocks clean up."""


@contextlib.contextmanager
def terminate_raises():
    """Within the block, SIGTERM (and SIGHUP) raise `Terminated` in the main thread,
    once: later ones are ignored until the block exits, so that cleanup finishes.

    Outside the main thread (signals cannot be set there) it does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        # Once: a child hears of its parent's death twice (the kernel's SIGTERM and
        # `watch_parent`'s), and a second raise would cut short the cleanup the first
        # one started. The block's exit restores the previous handlers.
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        raise Terminated(128 + signum)

    previous = {}
    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            try:
                previous[sig] = signal.signal(sig, handler)
            except (ValueError, OSError):
                pass
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def watch_parent(grace_seconds=60):
    """In a child started by `run_child`: exit when the parent goes away.

    A daemon thread blocks reading stdin (the parent's pipe); EOF means the parent
    has died (or closed it), so the child sends itself SIGTERM (its handler cleans
    up) and, should the main thread be stuck in native code, exits after
    `grace_seconds`. No polling.
    """
    global _watched_parent
    _watched_parent = os.getppid()

    def watch():
        try:
            while sys.stdin.buffer.read(65536):
                pass
        except (OSError, ValueError):
            pass
        os.kill(os.getpid(), signal.SIGTERM)
        threading.Event().wait(grace_seconds)
        os._exit(143)

    threading.Thread(target=watch, name="keras_egt-watch-parent", daemon=True).start()


def check_parent():
    """Raises `Terminated` in a child whose parent (see `watch_parent`) is gone.

    Called right before a result is published: the SIGTERM of the parent's death is
    asynchronous (once seen not to stop a worker before its rename), while an orphan is
    re-parented at once, which `os.getppid` shows without depending on signals.
    """
    if _watched_parent is not None and os.getppid() != _watched_parent:
        raise Terminated(128 + signal.SIGTERM)


def _alive(pid):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(folder, pattern):
    """Removes the entries of `folder` matching `pattern` (a regex whose group 1 is a
    pid) whose process no longer runs. Returns the names removed."""
    regex = re.compile(pattern)
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        match = regex.fullmatch(name)
        if match is None or _alive(int(match.group(1))):
            continue
        path = os.path.join(folder, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.remove(path)
        removed.append(name)
    return removed


def user_mode(folder):
    """Gives a folder made by `tempfile.mkdtemp` (0700) the user's umask, like `mkdir`."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(folder, 0o777 & ~mask)
