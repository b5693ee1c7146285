"""The `keras-egt` command line.

Each subcommand lives in its own module of this package, exposing
`register(subparsers)`; the handler it sets with `set_defaults(func=...)` takes the
parsed arguments and returns the exit code.
"""

import argparse
import importlib
import sys

# Modules of keras_egt.cli, in the order their commands appear in --help.
_COMMAND_MODULES = ["demo", "data", "train", "tune", "evaluate", "explain", "export", "firmware"]


class CLIError(Exception):
    """Bad input or a missing file: reported as one line, exit code 2 (as are
    ValueError, FileNotFoundError, PermissionError and ImportError)."""


def build_parser():
    parser = argparse.ArgumentParser(
        prog="keras-egt",
        description="Explanation-Guided Training of early-exit CNNs, from data to "
        "microcontroller.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in _COMMAND_MODULES:
        importlib.import_module(f"keras_egt.cli.{name}").register(subparsers)
    return parser


def main(argv=None):
    """Runs `keras-egt`; returns the exit code (0 on success, 2 on bad input)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    # ImportError: an optional package is missing (the message names the extra).
    # PermissionError: a folder that cannot be created (the message names it).
    except (CLIError, FileNotFoundError, PermissionError, ValueError, ImportError) as error:
        print(f"keras-egt {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
