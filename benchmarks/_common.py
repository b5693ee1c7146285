"""What every benchmark shares: the machine block of a result file and its atomic write.

Benchmarks run as scripts (`python benchmarks/NAME.py`), so this folder is on
`sys.path` and they `import _common`.
"""

import json
import os
import platform


def machine(**extra):
    """The machine a result was measured on, one spelling for every benchmark.

    Args:
        **extra: further entries (the Keras backend, a device string, package versions).

    Returns:
        A dict with `platform`, `cpu_count`, `python` and the `extra` entries.
    """
    return {"platform": platform.platform(), "cpu_count": os.cpu_count(),
            "python": platform.python_version(), **extra}


def cpu_count(machine_block):
    """The CPU count of a result's machine block, also from files written before
    `machine()` (which spelled it `cpus`, or wrote the block as one string)."""
    if isinstance(machine_block, dict):
        for key in ("cpu_count", "cpus"):
            if key in machine_block:
                return machine_block[key]
    return None


def write_json(path, data, indent=1):
    """Writes `data` as JSON to `path` atomically (creating its folder); returns `path`.

    Floats that numpy hands over (np.float32 and the like) are written as floats.
    """
    from keras_egt import atomic

    text = json.dumps(data, indent=indent, default=float) + "\n"
    return atomic.write_text(path, text)
