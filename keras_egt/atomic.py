"""Atomic file writes: readers never see a half-written file, failures leave none.

Every file keras-egt writes (reports, plots, models, C sources, data caches, the
export worker's result) goes through `atomic_output`.
"""

import contextlib
import errno
import hashlib
import os
import shutil
import tempfile

__all__ = ["atomic_output", "publish_folder", "staging_tag", "write_bytes", "write_text"]

# Longest folder name used whole in a staging name `.<name>.tmp-<pid>-<8 random>`,
# which must stay within NAME_MAX (255 bytes on common file systems).
_TAG_MAX = 200


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
    except OSError as error:
        # Writers (Keras' save, savefig) often raise without a file name, or name our
        # temporary: the user should read the path they asked for.
        if error.filename in (None, tmp) and error.errno is not None:
            raise OSError(error.errno, error.strerror, path) from error
        raise
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


def staging_tag(name):
    """`name` for a staging name next to it: shortened (with a digest) when long.

    Args:
        name: the base name of the folder being staged.

    Returns:
        `name` itself, or at most 200 bytes of it and a digest, so distinct long
        names give distinct tags and `.<tag>.tmp-<pid>-XXXXXXXX` fits NAME_MAX.

    Example:
    >>> staging_tag("deploy")
    'deploy'
    """
    raw = name.encode("utf-8")
    if len(raw) <= _TAG_MAX:
        return name
    digest = hashlib.sha256(raw).hexdigest()[:12]
    return raw[:_TAG_MAX - 13].decode("utf-8", "ignore") + "-" + digest


def publish_folder(tmp_dir, out_dir, last=None):
    """Moves the finished folder `tmp_dir` to `out_dir` as one unit (renames only).

    An existing empty `out_dir` is filled rather than replaced (its mode, owner and
    inode stay; it may be a mount point, on another file system), the file `last`
    moved in last; an existing `out_dir` is renamed
    away first and removed only once the new one is in place (put back on failure);
    a replaced symlink is unlinked, its target left alone.

    Args:
        tmp_dir: the staged folder, next to `out_dir`.
        out_dir: where it goes.
        last: a file name moved last when filling (its presence marks a complete folder).

    Example:
    >>> publish_folder(".deploy.tmp-42-abc", "deploy", last="manifest.json")
    """
    if os.path.isdir(out_dir) and not os.path.islink(out_dir) and not os.listdir(out_dir):
        _fill(tmp_dir, out_dir, last)
        return
    trash = None
    if os.path.lexists(out_dir):
        trash = tempfile.mkdtemp(prefix=f".{staging_tag(os.path.basename(out_dir))}.old-"
                                 f"{os.getpid()}-", dir=os.path.dirname(out_dir))
        os.rmdir(trash)
        os.rename(out_dir, trash)
    try:
        os.rename(tmp_dir, out_dir)
    except OSError:
        if trash is not None:
            os.rename(trash, out_dir)
        raise
    if trash is not None and os.path.islink(trash):
        os.unlink(trash)
    elif trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


def _fill(tmp_dir, out_dir, last):
    """Moves every entry of `tmp_dir` into the empty `out_dir`, `last` last; all or none."""
    moved = []
    try:
        for name in sorted(os.listdir(tmp_dir), key=lambda n: n == last):
            source, target = os.path.join(tmp_dir, name), os.path.join(out_dir, name)
            try:
                os.rename(source, target)
            except OSError as error:
                if error.errno != errno.EXDEV:
                    raise
                # Another file system (the empty folder is a mount point): copy beside the
                # target, then rename there, so no reader sees a half-copied file.
                partial = os.path.join(out_dir, f".{staging_tag(name)}.tmp-{os.getpid()}")
                try:
                    if os.path.isdir(source):
                        shutil.copytree(source, partial)
                    else:
                        shutil.copy2(source, partial)
                    os.rename(partial, target)
                finally:
                    _remove(partial)
            moved.append(target)
    except BaseException:
        for target in moved:
            _remove(target)
        raise
    shutil.rmtree(tmp_dir, ignore_errors=True)


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        with contextlib.suppress(OSError):
            os.remove(path)
