"""The `keras-egt` command line.

Each subcommand lives in its own module of this package, exposing
`register(subparsers)`; the handler it sets with `set_defaults(func=...)` takes the
parsed arguments and returns the exit code.
"""

import argparse
import errno
import importlib
import sys

# Modules of keras_egt.cli, in the order their commands appear in --help.
_COMMAND_MODULES = ["demo", "data", "train", "tune", "evaluate", "explain", "export", "firmware"]


class CLIError(Exception):
    """Bad input or a missing file: reported as one line, exit code 2 (as are
    ValueError, ImportError and every OSError)."""


# What to do about an OSError the system raised, by errno.
_FIXES = {
    errno.ENOSPC: "free some disk space or choose a folder on another disk",
    errno.EROFS: "the file system is read-only; choose a folder you can write to",
    errno.EISDIR: "it is a folder; name a file",
    errno.ENOTDIR: "a part of the path is a file, not a folder; check the path",
    errno.EBUSY: "it is in use (a mount point?); choose another path",
    errno.ENAMETOOLONG: "the name is too long; choose a shorter one",
    errno.EACCES: "choose a path you can read and write",
    errno.EPERM: "choose a path you can read and write",
    errno.ENOENT: "check the path",
    errno.EEXIST: "remove it or choose another path",
}


def describe_os_error(error, output=None):
    """One line naming the file of an OSError and the fix.

    Args:
        error: an `OSError` (raised by the system, or by keras-egt with its own message).
        output: the command's output path, named when the error names no file (a
            writer deep in TensorFlow or Keras often raises without one).

    Returns:
        The message, without newlines.

    Example:
    >>> describe_os_error(OSError(errno.ENOSPC, "No space left on device", "out.keras"))
    "out.keras: No space left on device; free some disk space or choose a folder on another disk."
    """
    if error.errno is None or error.strerror is None:
        message = str(error) or type(error).__name__
    else:
        where = error.filename
        if where is None:
            where = f"writing {output}" if output is not None else "a file"
        if error.filename2 is not None:
            where = f"{where} -> {error.filename2}"
        fix = _FIXES.get(error.errno, "check the path and try again")
        message = f"{where}: {error.strerror}; {fix}."
    return " ".join(message.split())


def build_parser():
    from keras_egt import __version__

    parser = argparse.ArgumentParser(
        prog="keras-egt",
        description="Explanation-Guided Training of early-exit CNNs, from data to "
        "microcontroller.",
    )
    parser.add_argument("--version", action="version", version=f"keras-egt {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in _COMMAND_MODULES:
        importlib.import_module(f"keras_egt.cli.{name}").register(subparsers)
    return parser


def main(argv=None):
    """Runs `keras-egt`; returns the exit code.

    The one error rule of the command line: bad input, a missing package and every
    `OSError` (disk full, read-only, a folder where a file goes, ...) end in one
    line on stderr and exit code 2; Ctrl-C in one line and exit code 130. Writers
    stage their output, so neither leaves anything half-written.

    Args:
        argv: the arguments (default `sys.argv[1:]`).

    Returns:
        0 on success, 2 on bad input or a file problem, 130 when interrupted.
    """
    args = build_parser().parse_args(argv)
    prefix = f"keras-egt {args.command}: error:"
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"keras-egt {args.command}: interrupted; what was being written was not "
              "kept. Run the command again.", file=sys.stderr)
        return 130
    # ImportError: an optional package is missing (the message names the extra).
    except (CLIError, ValueError, ImportError) as error:
        print(f"{prefix} {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"{prefix} {describe_os_error(error, _output_of(args))}", file=sys.stderr)
        return 2


def _output_of(args):
    # Every command names what it writes by one of these options.
    for name in ("out_dir", "output", "output_dir"):
        value = getattr(args, name, None)
        if value is not None:
            return value
    return None


if __name__ == "__main__":
    sys.exit(main())
