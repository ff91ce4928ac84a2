"""The verdict service: journal, head, line port and server put together, until stopped.

What ``glass-inspect serve`` runs (and ``start``, after the engine is ready). The order matters:
the journal first (a journal that cannot be opened stops everything before the head is built),
then the head (one with missing parts stops here, before the line controller ever sees a port),
then the link the head file's ``[verdict_link] kind`` names (:mod:`firmware_bridge.links`:
the ASCII protocol, Modbus RTU or TCP, discrete I/O), all on the same journal and inspection
service, and with ``[opcua]`` the OPC UA server beside the link, on its service
(:mod:`firmware_bridge.opcua_server`; one that cannot start stops serve, as a port would).
SIGTERM stops the loop cleanly; every way out closes the head (LEDs dark), the journal, and
marks the heartbeat stopped.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from firmware_bridge.journal import DEFAULT_KEEP, DEFAULT_MAX_BYTES

log = logging.getLogger("glass-inspect.bridge")


def serve(url: str, baud: int, journal_path: str, make_inspector: Callable[[], tuple],
          *, health: str | None = None, repeat_s: float = 1.0, abort_grace_s: float = 2.0,
          inspect_timeout_s: float = 300.0, reopen_s: float = 0.5, label: str = "head",
          engine: str | None = None, journal_max_bytes: int = DEFAULT_MAX_BYTES,
          journal_keep: int = DEFAULT_KEEP, link=None, metrics: str | None = None,
          fleet=None, head_id: str = "head", web=None, head=None) -> int:
    """Serve verdicts until SIGTERM or Ctrl-C; the exit status. ``link`` is the head file's
    ``[verdict_link]`` (:class:`edge.config.VerdictLink`); without it, the ASCII link on
    ``url`` at ``baud``. ``make_inspector()`` gives (inspector, close). The journal is
    rotated past ``journal_max_bytes`` (0: never), keeping ``journal_keep`` old files.
    ``metrics`` (HOST:PORT) serves Prometheus metrics (:mod:`firmware_bridge.metrics`);
    ``fleet`` (the head file's ``[fleet]``) reports to an MQTT broker as ``head_id`` when its
    own is not set (:mod:`firmware_bridge.fleet`). ``web`` (a
    :class:`firmware_bridge.web.server.WebPage`) serves the operator page in its own thread.
    ``head`` (the :class:`edge.config.HeadConfig`), when its ``[opcua]`` is set, adds the OPC UA
    server."""
    from edge.config import VerdictLink
    from firmware_bridge.journal import Journal, JournalError
    from firmware_bridge.links import open_link

    if link is None:  # as before kinds existed: not validated, any baud pyserial takes
        link = VerdictLink.model_construct(kind="ascii", port=url, baud=baud)

    try:
        journal = Journal(journal_path, max_bytes=journal_max_bytes, keep=journal_keep)
    except JournalError as exc:
        print(f"glass-inspect serve: {exc}", file=sys.stderr)
        return 2
    try:
        inspector, close = make_inspector()
    except BaseException:
        journal.close()
        raise
    heartbeat = None
    if health:
        from firmware_bridge.health import Heartbeat

        # the inspector's own state of the moment (the head's LED watchdog), where it has one
        where = (f"{link.host}:{link.tcp_port}" if link.kind == "modbus-tcp" else
                 "header pins" if link.kind == "io" else link.port)
        heartbeat = Heartbeat(health, report=getattr(inspector, "health", None), port=where,
                              journal=str(Path(journal_path).resolve()), engine=engine,
                              inspector=label)
    stop = threading.Event()
    server = None
    watchers = []  # metrics, fleet: they hear each verdict after the link
    try:
        from firmware_bridge.metrics import serve_metrics

        # always made (the web page shows it); on HTTP only with --metrics
        watchers.append(serve_metrics(metrics, journal, inspector))
    except (OSError, ValueError) as exc:
        print(f"glass-inspect serve: cannot serve metrics on {metrics}: {exc}", file=sys.stderr)
        close()
        if hasattr(inspector, "close"):
            inspector.close()
        journal.close()
        return 2

    def on_signal(signum: int, frame: object) -> None:
        # dark first and the inspection told at once: the server loop would notice the stop
        # only at its next read, and the acquisition would light one more group meanwhile
        if hasattr(inspector, "darken"):
            inspector.darken()
        if server is not None:
            server.abort_now(f"the head is stopping (signal {signum}); ask again after its "
                             "restart")
        log.info("stopping (signal %d)", signum)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
    try:
        server = open_link(link, inspector, journal, heartbeat=heartbeat, repeat_s=repeat_s,
                           abort_grace_s=abort_grace_s, inspect_timeout_s=inspect_timeout_s,
                           reopen_s=reopen_s)
        log.info("serving verdicts (%s link: %s) with the %s inspector", link.kind,
                 server.describe(), label)
        service = getattr(server, "service", None)  # the links' InspectionService
        if service is not None:
            watchers[0].attach(service)
        if fleet is not None and service is not None:
            from firmware_bridge.fleet import start_publisher

            watchers.append(start_publisher(fleet, head_id, inspector, journal, service))
        if web is not None and service is not None:
            watchers.append(_show_on(web, service, server, inspector, label))
        if head is not None and head.opcua is not None:
            from firmware_bridge.opcua_server import start_beside

            try:
                watchers.append(start_beside(head.opcua, server, inspector, head))
            except BaseException:
                server.shutdown()  # the link's port or pins are let go before the message
                raise
        server.run(stop)
    except KeyboardInterrupt:
        log.info("stopped")
    finally:
        for w in reversed(watchers):
            w.close()
        close()
        if hasattr(inspector, "close"):  # the head's review writer finishes its queue
            inspector.close()
        journal.close()
        if heartbeat is not None:
            heartbeat.write("stopped")
    return 0


def _show_on(web, service, server, inspector, label: str):
    """Start the web page on ``service``, which tells the page's state of each start,
    progress and verdict (:mod:`firmware_bridge.web_state`); the page, to close."""
    from firmware_bridge.web_state import WebState

    state = WebState()

    def shown(entry, verdict, seconds: float) -> None:
        state.verdict(entry.verdict_id, verdict.to_dict(), seconds)
        problem = service.journal_problem
        state.problem(f"verdict journal: {problem}" if problem else None)

    service.web = state
    service.listeners.append(shown)
    url = web.start(state, engine=getattr(inspector, "engine", None), inspector=label,
                    abort=server.abort_now)
    print(f"web page: {url}", flush=True)
    return web
