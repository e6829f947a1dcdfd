"""Crash-safe file writes, used by every part that writes a file (checkpoints, configs, logs, figures)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

from .errors import UsageError


def check_output_path(path: str | os.PathLike) -> Path:
    """Refuse, in one line and before any work, an output path no file can be written to: an existing
    directory, or a path under an existing file. Commands call it up front; ``atomic_write`` again."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{path} is a directory; give a file path for the output")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"{path}: {parent} is a file, not a directory; choose another output path")
            break
    return path


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)``, fsync, then rename over ``path``.

    A crash (or a full disk) at any point leaves either the old file or the new one, never a torn file.
    """
    path = check_output_path(path)
    # the folders this write creates, removed again if it fails: a failed write leaves nothing behind
    created = [d for d in (path.parent, *path.parent.parents) if not d.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        # mkstemp (and some writers) create 0600; a checkpoint gets what any new file would (umask)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        for d in created:  # deepest first
            try:
                d.rmdir()
            except OSError:  # not empty (something else wrote there meanwhile): keep it
                break
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """``atomic_write`` for a text file."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


__all__ = ["atomic_write", "atomic_write_text", "check_output_path"]
