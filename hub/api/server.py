"""Serving the installer's web app inside the hub process (uvicorn on the hub's event loop).

The hub owns the process's signals: uvicorn's own SIGINT/SIGTERM handling is switched off, and the
server stops when its task is cancelled. Access logs are off (a URL may carry a name); the app
logs what matters itself, without personal data.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Generator

import uvicorn

from hub.api.app import create_app
from hub.config import ApiConfig
from hub.installer import Installer

log = logging.getLogger(__name__)


class _QuietServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # the hub handles SIGTERM and SIGINT


async def serve(installer: Installer, config: ApiConfig) -> None:
    """Serve until cancelled. Without an installer PIN (`[api] pin_hash`) nothing is served."""
    if not config.pin_hash:
        log.error("the installer web app is enabled but has no PIN: run `anju provision pin --config FILE`")
        return
    app = create_app(installer, config)
    server = _QuietServer(
        uvicorn.Config(app, host=config.host, port=config.port, access_log=False, log_config=None, lifespan="off")
    )
    log.info("installer web app on http://%s:%d/ (home network only)", config.host, config.port)
    try:
        await server.serve()
    except (SystemExit, OSError) as exc:  # uvicorn exits the process when it cannot bind: not the hub
        log.error(
            "the installer web app could not listen on %s:%d (%s); the hub goes on without it",
            config.host,
            config.port,
            exc,
        )
    finally:
        server.should_exit = True
