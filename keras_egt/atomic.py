"""Atomic file writes: readers never see a half-written file, failures leave none.

Every file keras-egt writes (reports, plots, models, C sources, data caches, the
export worker's result) goes through `atomic_output`.
"""

import contextlib
import os
import tempfile

__all__ = ["atomic_output", "write_bytes", "write_text"]


@contextlib.contextmanager
def atomic_output(path, suffix=""):
    """Yields a temporary path next to `path`; on success it replaces `path` atomically.

    Readers never see a half-written file, and a failure (an exception, or the
    process killed) leaves `path` as it was and no temporary file behind on an
    exception. The file gets the usual permissions (0666 less the umask), not
    mkstemp's 0600.

    Args:
        path: the file to write.
        suffix: the temporary file's suffix (some writers pick the format by it).

    Example:
    >>> with atomic_output("plot.png", ".png") as tmp:
    ...     fig.savefig(tmp)
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=suffix)
    os.close(fd)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path, text, encoding="utf-8"):
    """Writes `text` to `path` atomically (Unix newlines); returns `path`."""
    with atomic_output(path) as tmp:
        with open(tmp, "w", encoding=encoding, newline="\n") as f:
            f.write(text)
    return path


def write_bytes(path, data):
    """Writes `data` to `path` atomically; returns `path`."""
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return path
