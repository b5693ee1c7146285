"""Every Python block of README.md runs, on tiny settings, as a new user would run it."""

import os
import re

import pytest

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")

# Tiny settings: the README shows the real ones.
_SUBSTITUTIONS = [
    (r"load_data\(\)", "load_data(num_train=120, num_test=60)"),
    (r'widths="paper"', "widths=(4, 8, 8, 8, 8)"),
    (r"epochs=50", "epochs=1"),
    (r"num_users=500", "num_users=4"),
    (r"max_trials=30", "max_trials=2"),
    (r"EGTHyperModel\(", "EGTHyperModel(lambdas=(0.0, 0.3), "),
]


def _python_blocks():
    with open(README, encoding="utf-8") as f:
        text = f.read()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_has_python_blocks():
    assert _python_blocks()


@pytest.mark.tensorflow_only
@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(_python_blocks())))
def test_readme_python_block_runs(index, tmp_path, monkeypatch):
    code = _python_blocks()[index]
    for pattern, replacement in _SUBSTITUTIONS:
        code = re.sub(pattern, replacement, code)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    exec(compile(code, f"README.md block {index + 1}", "exec"), {"__name__": "__readme__"})
    # Every file the block names was written.
    written = re.findall(r'"([\w-]+\.(?:png|json|keras))"', code)
    for name in written:
        assert (tmp_path / name).stat().st_size > 0, name
    if '"deploy/"' in code:
        assert (tmp_path / "deploy" / "manifest.json").exists()
    assert written or '"deploy/"' in code
