"""The MCU architecture language: block strings, stages and presets, without Keras.

`EarlyExitMCU` (`keras_egt.mcu`) builds models from it and `keras_egt.budget` counts
an architecture's cost from it before anything is built, so both read the same
grammar: a stage is a list of blocks `c<filters>` (3x3 conv) or `s<filters>`
(depthwise-separable), each with an optional trailing `p` (2x2 max pooling); stages
are separated by `|` in a string.
"""

import re

__all__ = ["MCU_PRESETS", "parse_block", "resolve_stages"]

MCU_PRESETS = {
    # Four exits; see the module docstring and benchmarks/mcu_design.py.
    "mcu": (("c8p", "s16p", "s32p"), ("c64",), ("c96",), ("c96p",)),
}

_BLOCK = re.compile(r"^([cs])([1-9][0-9]*)(p?)$")


def resolve_stages(stages):
    """Turns a preset name, a `"c8p s16p | c64"` string or nested lists into stages.

    Args:
        stages: a key of `MCU_PRESETS`, a string of blocks with stages separated by
            `"|"`, or a sequence of stages, each a sequence of block strings (see
            the module docstring).

    Returns:
        A tuple of stages, each a tuple of block strings; at least 2 stages.

    Example:
    >>> resolve_stages("c8p s16p | c32p | c64")
    (('c8p', 's16p'), ('c32p',), ('c64',))
    """
    if isinstance(stages, str):
        if stages in MCU_PRESETS:
            return MCU_PRESETS[stages]
        if not re.search(r"[|\s]", stages.strip()) and not _BLOCK.match(stages.strip()):
            raise ValueError(
                f"Unknown MCU preset {stages!r}; use one of {sorted(MCU_PRESETS)} or blocks "
                "such as 'c8p s16p s32p | c64 | c96p | c128'."
            )
        stages = [part.split() for part in stages.split("|")]
    try:
        stages = tuple(tuple(str(block) for block in stage) for stage in stages)
    except TypeError:
        raise ValueError(
            f"stages must be a preset name, a block string or a list of stages (lists of "
            f"block strings), got {stages!r}."
        ) from None
    for stage in stages:
        for block in stage:
            if not _BLOCK.match(block):
                raise ValueError(
                    f"Unknown block {block!r}: write 'c<filters>' (3x3 conv), 's<filters>' "
                    "(depthwise-separable) with an optional trailing 'p' (2x2 max pooling), "
                    "e.g. 'c8p' or 's32'."
                )
    if len(stages) < 2 or any(not stage for stage in stages):
        raise ValueError(
            f"stages must hold at least 2 non-empty stages (one exit after each), got "
            f"{stages!r}."
        )
    return stages


def parse_block(block):
    """One block string (as `resolve_stages` checked it) as its parts.

    Args:
        block: e.g. `"s16p"`.

    Returns:
        `(kind, filters, pool)`: `"c"` or `"s"`, an int, a bool.

    Example:
    >>> parse_block("s16p")
    ('s', 16, True)
    """
    kind, filters, pool = _BLOCK.match(block).groups()
    return kind, int(filters), bool(pool)
