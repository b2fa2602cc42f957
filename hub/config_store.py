"""Changing a hub's configuration file from the hub itself (the installer's web app, `anju provision`).

`ConfigStore.update` takes the file's TOML as a dict, lets the caller change it, validates the
result as a whole `HubConfig` (a change that would make the file invalid is refused with the same
located errors `anju config check` gives, and nothing is written), then replaces the file
atomically (write a temporary file, fsync, rename) with mode 0600: it holds personal data and the
PIN's hash. The previous version is kept as `<name>.bak`. Comments in the file are not kept (TOML
writers cannot keep them): provisioned hubs have generated files.
"""

from __future__ import annotations

import contextlib
import os
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tomli_w
from pydantic import ValidationError

from hub.config import ConfigError, HubConfig, load_config, located_errors, read_file, toml_line


class ConfigStore:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> HubConfig:
        return load_config(self.path)

    def raw(self) -> dict[str, Any]:
        try:
            return tomllib.loads(read_file(self.path, "configuration"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{self.path}: not valid TOML: {exc}") from exc

    def update(self, change: Callable[[dict[str, Any]], None]) -> HubConfig:
        """Apply `change` to the file's data; write it only if the result is a valid configuration."""
        raw = self.raw()
        change(raw)
        text = tomli_w.dumps(raw)
        try:
            HubConfig.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError("\n".join(located_errors(exc, self.path, lambda loc: toml_line(text, loc)))) from exc
        try:
            self._write(text.encode())
        except OSError as exc:
            raise ConfigError(f"{self.path}: cannot write it ({exc.strerror or exc}); nothing was changed") from exc
        return self.load()

    def _write(self, data: bytes) -> None:
        """The new file next to the old, written whole and read back, then renamed over it; the old
        one kept as `.bak` (written the same way first). A full disk fails here, changing nothing."""
        backup = self.path.with_name(self.path.name + ".bak")
        with contextlib.suppress(FileNotFoundError):
            _write_whole(backup, self.path.read_bytes())
        partial = _write_whole(self.path.with_name(self.path.name + ".new"), data, rename=False)
        try:
            tomllib.loads(partial.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            partial.unlink(missing_ok=True)
            raise ConfigError(f"{self.path}: the new configuration could not be written whole ({exc})") from exc
        partial.replace(self.path)
        _fsync_directory(self.path.parent)


def _write_whole(path: Path, data: bytes, rename: bool = True) -> Path:
    """Write `data` to a fresh 0600 file (all of it: a short write is retried, a full disk raises),
    fsync it, and with `rename` move it to `path`. Returns where the data is."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.unlink(missing_ok=True)  # a leftover would keep its old mode
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        temporary.unlink(missing_ok=True)
        raise
    os.close(fd)
    if not rename:
        return temporary
    temporary.replace(path)
    return path


def _fsync_directory(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
