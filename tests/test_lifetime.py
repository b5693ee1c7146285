"""Children of the export (keras_egt/export/_lifetime.py): spawned, not forked, and gone
with their parent."""

import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _python(code, **kwargs):
    return subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True,
                          timeout=120, **kwargs)


def test_run_child_does_not_fork_the_parent():
    # A fork of a multithreaded parent is what JAX warns about ("os.fork() was called");
    # at-fork hooks run exactly when subprocess forks instead of spawning.
    code = (
        "import os, sys\n"
        "from keras_egt.export import _lifetime\n"
        "os.register_at_fork(before=lambda: print('forked', flush=True))\n"
        "child = 'from keras_egt.export import _lifetime; _lifetime.die_with_parent(); print(1)'\n"
        "done = _lifetime.run_child([sys.executable, '-c', child])\n"
        "print('child said', done.stdout.strip(), flush=True)\n"
    )
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert "child said 1" in result.stdout
    assert "forked" not in result.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_a_child_dies_with_its_parent():
    # The parent starts a child that would sleep for a minute, prints its pid, and is
    # SIGKILLed (no cleanup of its own can run); the kernel must end the child.
    child = ("import time; from keras_egt.export import _lifetime; "
             "_lifetime.die_with_parent(); print('ready', flush=True); time.sleep(60)")
    parent = (
        "import subprocess, sys\n"
        "from keras_egt.export import _lifetime\n"
        f"p = subprocess.Popen([sys.executable, '-c', {child!r}], env=_lifetime.child_env(),\n"
        "                     stdout=subprocess.PIPE, text=True)\n"
        "assert p.stdout.readline().strip() == 'ready'\n"
        "print(p.pid, flush=True)\n"
        "import time; time.sleep(60)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", parent], env=ENV, stdout=subprocess.PIPE,
                               text=True)
    try:
        child_pid = int(process.stdout.readline())
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _alive(child_pid):
        time.sleep(0.1)
    alive = _alive(child_pid)
    if alive:
        os.kill(child_pid, signal.SIGKILL)
    assert not alive, "the child outlived its SIGKILLed parent"


def test_a_child_whose_parent_is_already_gone_exits():
    # The parent may die between spawning and prctl: the child then sees another parent.
    env = dict(ENV, KERAS_EGT_PARENT_PID="1" if os.getpid() != 1 else "2")
    result = subprocess.run(
        [sys.executable, "-c",
         "from keras_egt.export import _lifetime; _lifetime.die_with_parent(); print('ran on')"],
        env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 143
    assert "ran on" not in result.stdout


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][0] != "Z"  # a zombie has already died
    except FileNotFoundError:
        return False
