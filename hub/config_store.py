"""Changing a hub's configuration file from the hub itself (the installer's web app, `anju provision`).

`ConfigStore.update` takes the file's TOML as a dict, lets the caller change it, validates the
result as a whole `HubConfig` (a change that would make the file invalid is refused with the same
located errors `anju config check` gives, and nothing is written), then replaces the file
atomically (write a temporary file, fsync, rename) with mode 0600: it holds personal data and the
PIN's hash. The previous version is kept as `<name>.bak`. Comments in the file are not kept (TOML
writers cannot keep them): provisioned hubs have generated files.

`check_text` and `replace_text` do the same for a whole new file given as text (a configuration
sent by the centre, hub.commands): checked exactly as `load` would read it, written byte for byte.
"""

from __future__ import annotations

import contextlib
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tomli_w
from pydantic import ValidationError

from hub.config import ConfigError, HubConfig, load_config, located_errors, read_file, toml_line
from hub.files import fsync_directory, write_atomic


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

    def check_text(self, text: str) -> HubConfig:
        """The configuration `text` would be if it were this file (errors name this file's lines)."""
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{self.path}: not valid TOML: {exc}") from exc
        try:
            config = HubConfig.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError("\n".join(located_errors(exc, self.path, lambda loc: toml_line(text, loc)))) from exc
        if not config.data_dir.is_absolute():
            config = config.model_copy(update={"data_dir": (self.path.parent / config.data_dir).resolve()})
        return config

    def replace_text(self, text: str) -> HubConfig:
        """Replace the whole file with `text` if it is a valid configuration (the old one kept as `.bak`)."""
        config = self.check_text(text)
        try:
            self._write(text.encode())
        except OSError as exc:
            raise ConfigError(f"{self.path}: cannot write it ({exc.strerror or exc}); nothing was changed") from exc
        return config

    def _write(self, data: bytes) -> None:
        """The old file kept as `.bak` first, then the new one replaced atomically and read back
        (a full disk fails before the rename, changing nothing)."""
        with contextlib.suppress(FileNotFoundError):
            write_atomic(self.path.with_name(self.path.name + ".bak"), self.path.read_bytes())
        write_atomic(self.path, data)
        fsync_directory(self.path.parent)
