"""One writer at a time for a deploy folder or a tuner directory.

Two `export` runs into one folder would each publish, one silently replacing the
other; two `tune` runs on one directory would run every trial twice. `writer_lock`
takes an exclusive `fcntl.flock` on a lock file beside the target (beside, not
inside: an export replaces the whole folder). The kernel drops the lock when the
holding process dies, however it dies, so a killed run never leaves a folder locked.
The holder removes the lock file when it is done, so a finished run leaves nothing
beside its output; a writer that locked a file just unlinked by the last holder sees
that the path no longer names its inode and takes the lock again on the new file.
"""

import contextlib
import os

__all__ = ["LockedError", "lock_path", "writer_lock"]


class LockedError(OSError):
    """Another live process is writing the same folder."""


def lock_path(target):
    """The lock file of `target`: `.<name>.lock` in the folder that holds it.

    Args:
        target: the folder to be written (it need not exist yet).

    Returns:
        The lock file's path.

    Example:
    >>> lock_path("runs/lambda")
    'runs/.lambda.lock'
    """
    parent, name = os.path.split(os.path.normpath(os.fspath(target)))
    # Names near NAME_MAX would make ".<name>.lock" too long; keep the start.
    return os.path.join(parent, f".{name[:200]}.lock")


def _holder(handle):
    try:
        handle.seek(0)
        text = handle.read(32).strip()
    except OSError:
        return "unknown"
    return text if text.isdigit() else "unknown"


@contextlib.contextmanager
def writer_lock(target, what="folder"):
    """Holds the one-writer lock of `target` for the `with` block; refuses if held.

    Args:
        target: the deploy folder or tuner directory to be written.
        what: what to call it in the error (e.g. "deploy folder").

    Yields:
        The lock file's path.

    Raises:
        LockedError: another live process holds the lock; one line naming the
            folder and that process's id.

    Example:
    >>> with writer_lock("deploy", "deploy folder"):  # doctest: +SKIP
    ...     export_into("deploy")
    """
    if os.name != "posix":  # fcntl is POSIX-only; no lock rather than no export
        yield None
        return
    import fcntl

    path = lock_path(target)
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        # No file can be made beside the target, so no writer can write it either:
        # the writer's own error (naming the folder) says so better than this one.
        yield None
        return
    handle = open(fd, "r+", encoding="ascii")
    try:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise LockedError(
                    f"{os.fspath(target)!r}: another process (pid {_holder(handle)}) is writing "
                    f"this {what} now; wait for it to finish or choose another {what}. "
                    f"Received: target={os.fspath(target)!r}."
                ) from None
            if _names_inode(path, handle):
                break
            # The last holder unlinked this file between our open and our flock.
            handle.close()
            handle = open(os.open(path, os.O_RDWR | os.O_CREAT, 0o666), "r+", encoding="ascii")
        try:
            with contextlib.suppress(OSError):  # the pid is for the message only (disk full?)
                os.ftruncate(handle.fileno(), 0)
                os.pwrite(handle.fileno(), str(os.getpid()).encode("ascii"), 0)
            yield path
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)  # still under the lock: nobody else holds this inode
    finally:
        handle.close()  # closing drops the flock


def _names_inode(path, handle):
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(handle.fileno())
    return (on_disk.st_dev, on_disk.st_ino) == (mine.st_dev, mine.st_ino)
