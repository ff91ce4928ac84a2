"""The web page's server: uvicorn in a thread of the serving process.

Choices: a thread, not a process, because the page reads the service's state in memory
(:mod:`firmware_bridge.web_state`) and the kept samples on disk, and writes nothing the
service reads; its asyncio loop is its own. uvicorn installs no signal handlers outside the
main thread, so ``serve``'s SIGTERM handling stays as it is. One worker, no reload, no access
log (each request would cost a log line beside the verdicts').
"""

from __future__ import annotations

import logging
import threading
import time

from edge.errors import UserError

log = logging.getLogger("glass-inspect.web")

DEFAULT_HOST = "127.0.0.1"


class WebError(UserError, ValueError):
    """The page cannot be served as asked (a bad address, a missing extra)."""


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` or ``PORT`` (host 127.0.0.1); port 0 takes a free one."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]") if sep else ""
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535:
        raise WebError(f"--web {text!r}: expected HOST:PORT or PORT, with a port from 0 to "
                       "65535 (e.g. 127.0.0.1:8080)")
    return host or DEFAULT_HOST, number


def token_for(cfg) -> str:
    """The token that allows changes: $GLASS_INSPECT_WEB_TOKEN, else the head file's
    ``[web] token``, else none (read-only)."""
    import os

    from firmware_bridge.web.guard import TOKEN_ENV

    env = os.environ.get(TOKEN_ENV, "")
    if env:
        from edge.config import Web

        try:
            Web(token=env)
        except ValueError:
            raise WebError(f"{TOKEN_ENV}: expected 16 to 256 characters of A-Z a-z 0-9 _ - . ~ "
                           f"(got {len(env)} characters)") from None
        return env
    web = getattr(cfg, "web", None)
    return web.token if web is not None else ""


class WebPage:
    """The page of one serving head. ``start(state, ...)`` begins serving in a thread and
    returns once the socket listens; ``stop()`` ends it."""

    def __init__(self, listen: str, cfg=None, health_file: str | None = None) -> None:
        self.host, self.port = parse_listen(listen)
        self.cfg = cfg
        self.health_file = health_file
        self.token = token_for(cfg)
        self._server = None
        self._thread: threading.Thread | None = None

    def start(self, state, *, engine: dict | None = None, inspector: str = "head",
              abort=None, timeout_s: float = 10.0) -> str:
        """Serve the page of ``state`` (a :class:`firmware_bridge.web_state.WebState`); its
        URL. ``abort(reason)`` stops the running inspection."""
        try:
            import uvicorn

            from firmware_bridge.web.app import Site, make_app
        except ImportError as exc:
            raise WebError(f"--web needs the web extra: pip install 'glass-inspect[web]' "
                           f"({exc})") from None
        site = Site(state, self.cfg, dict(engine or {}), inspector, self.health_file,
                    self.token, abort)
        config = uvicorn.Config(make_app(site), host=self.host, port=self.port,
                                log_level="warning", access_log=False, lifespan="off",
                                workers=1, timeout_graceful_shutdown=2)
        self._server = server = uvicorn.Server(config)
        self._thread = threading.Thread(target=server.run, name="web-page", daemon=True)
        self._thread.start()
        end = time.monotonic() + timeout_s
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > end:
                raise WebError(f"--web: cannot serve on {self.host}:{self.port} (in use, or "
                               "not an address of this machine?)")
            time.sleep(0.02)
        sockets = [s for srv in server.servers for s in srv.sockets]
        if sockets:
            self.port = sockets[0].getsockname()[1]
        url = f"http://{self.host}:{self.port}/"
        log.info("web page: %s (%s)", url, "token set: labels and abort allowed"
                 if self.token else "read-only: no [web] token")
        return url

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(5)

    close = stop  # serve closes what watches the service
