"""Crash-safe file writes, shared by the agent's state store and the Unit emulator's state dir."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` so that a crash at any point leaves the old file or the new
    one, never a torn one: a private temp file (mode 0600), fsync, rename, fsync of the directory.

    ``durable=False`` leaves out both fsyncs, for records a restart does not resume from (the
    backups, the history): a reader still never sees a torn file, but a power loss may take the
    last write back. Each fsync waits for the disk: on one shared by many agents, 5-20 ms apiece.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if not durable:
        return
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
