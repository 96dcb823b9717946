"""Writing output files atomically: a temporary file in the target's folder, renamed into place when complete.

An interrupted or failed write leaves neither a half-written target nor the temporary file; the finished file
gets the permissions a plain ``open(path, "w")`` would give (``mkstemp`` makes it private). Standard library
only: the runtime uses it without PyTorch.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def default_permissions(path: str | Path) -> None:
    """Give a file or folder made by ``tempfile`` (private: 0600 / 0700) the permissions ``open`` or ``mkdir``
    would have given it under the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~mask)


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yields a temporary path beside ``path`` (same folder, hidden, ending in ``suffix`` — for writers that pick
    the format from the name) for the caller to write; renames it onto ``path`` when the block ends normally,
    removes it otherwise. The folder must exist (FileNotFoundError otherwise: check it first for a clear error)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        default_permissions(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb", encoding: str | None = None) -> Iterator:
    """``open(path, mode)`` through ``atomic_path``: the file appears under ``path`` only when complete."""
    with atomic_path(path) as tmp, open(tmp, mode, encoding=encoding) as fh:
        yield fh
