"""Atomic file writing: a file is always either its previous version or the complete new one.

:func:`atomic_write` writes into a hidden temporary file in the same directory
(``.<name>.<random>.tmp``), flushes and ``fsync``-s it and renames it into place
(``os.replace``). A process killed while writing leaves the previous file intact, plus the
temporary (:func:`temporary_target` names the file it was for), which its owner may remove
later. A full disk is one
:class:`~nrd_rsp.errors.DiskFullError` naming the directory and its free space.
"""

import errno
import os
import shutil
import tempfile
from typing import Callable, Optional

from .errors import DiskFullError

__all__ = ["TMP_SUFFIX", "atomic_write", "temporary_target"]

TMP_SUFFIX = ".tmp"


def temporary_target(file_name: str) -> Optional[str]:
    """The base name of the file that :func:`atomic_write` was writing when it created the
    temporary ``file_name`` (a base name, ``.<name>.<random>.tmp``); None if it is not one."""
    if not (file_name.startswith(".") and file_name.endswith(TMP_SUFFIX)):
        return None
    target, dot, _ = file_name[1 : -len(TMP_SUFFIX)].rpartition(".")
    return target if dot and target else None


def atomic_write(path: str, write: Callable) -> None:
    """Write ``path`` through ``write(binary file)`` into a temporary file in the same directory,
    ``fsync`` it and rename it into place, so that ``path`` is always either old or complete."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(
        prefix=f".{os.path.basename(path)}.", suffix=TMP_SUFFIX, dir=directory
    )
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if _disk_full(e):
            raise DiskFullError(
                f"No space left on the disk of {directory} while writing "
                f"{os.path.basename(path)} ({shutil.disk_usage(directory).free >> 20} MiB free; "
                "the previous version of the file is intact): free space there, or point "
                "OUTPUT_DIR at a larger disk, and rerun (with --resume when training)"
            ) from e
        raise
    _sync_directory(directory)


def _sync_directory(directory: str) -> None:
    """``fsync`` the directory, so that a rename in it is durable (best effort)."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def _disk_full(e: Optional[BaseException]) -> bool:
    """Whether ``e`` or an exception it was raised from is ENOSPC (``torch.save`` re-raises the
    ``OSError`` as a ``RuntimeError``)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def _umask() -> int:
    """The process's umask (read by setting it and setting it back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask
