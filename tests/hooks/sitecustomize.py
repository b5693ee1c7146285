"""A test hook (tests/test_deploy_integrity.py): pause an export at a known point.

On the PYTHONPATH of a child process with KERAS_EGT_TEST_PAUSE=<file>: when
`keras_egt.export.exporter` is imported, its per-segment conversion is wrapped so that
before segment 2 the process writes its pid to <file> and sleeps. A test then kills
the export mid-way at that point, instead of guessing how long the export takes.
Processes that never import the exporter (the arena probe, say) are not touched.
"""

import importlib.abc
import os
import sys
import time

_MODULE = "keras_egt.export.exporter"


def _patch(module):
    convert = module._convert_checked

    def paused(segment, calibration, k, *args):
        if k == 2:
            marker = os.environ["KERAS_EGT_TEST_PAUSE"]
            with open(marker + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.rename(marker + ".tmp", marker)
            time.sleep(120)
        return convert(segment, calibration, k, *args)

    module._convert_checked = paused


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != _MODULE:
            return None
        for finder in sys.meta_path:
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(name, path, target)
                if spec is not None:
                    break
        else:
            return None
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            _patch(module)

        spec.loader.exec_module = exec_and_patch
        return spec


if os.environ.get("KERAS_EGT_TEST_PAUSE"):
    sys.meta_path.insert(0, _Finder())
