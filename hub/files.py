"""Writing a file so that it is either all there or not changed: the one way Anju writes files
that hold keys, personal data or configuration (configs, certificates, reports, provisioning
bundles, backups).

`atomic_file` opens a temporary file in the same directory, created with its final mode from the
first byte (a key is never readable by others, not even briefly); what the caller writes to it is
fsynced and renamed over the target when the block ends; on any failure the temporary file is
removed and the target is as it was. `write_atomic` writes bytes that way (file objects retry short
writes; a full disk raises). `fsync_directory` makes the renames in a directory durable.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def atomic_file(path: Path, mode: int = 0o600) -> Iterator[BinaryIO]:
    """A file to write `path` through, for contents too large to hold in memory (a backup)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    with atomic_file(path, mode) as file:
        file.write(data)


def fsync_directory(directory: Path) -> None:
    """Make the renames in `directory` durable (a power cut must not undo a file reported saved)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
