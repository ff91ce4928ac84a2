"""The fleet over MQTT: each head publishes, ``glass-inspect fleet`` watches them all.

Topics (docs/fleet.md), all QoS 1, JSON payloads:

* ``glass-inspect/<head-id>/verdict``: each verdict without images (sample id, verdict id,
  status, reason, defects in mm, timings), not retained;
* ``glass-inspect/<head-id>/health``: the head's state (``serving``, ``stopped``, or
  ``offline``, the retained last will the broker sends when the head vanishes without saying
  goodbye), the LED watchdog, the journal's backlog; retained, every ``[fleet] health_s``;
* ``glass-inspect/<head-id>/counts``: PASS, FAIL, ERROR since the head started and the yield;
  retained, after each verdict.

**The head's side** (:class:`Publisher`). The verdict loop only appends to a bounded
in-memory queue (``[fleet] queue`` verdicts, default 10 000) and goes on: it never waits for
the broker. One sender thread publishes the queue's head, waits for the broker's PUBACK,
then takes the next, so verdicts leave in order; while the broker is away paho-mqtt
reconnects (0.5 s to 10 s apart) and re-sends the one in flight. Health and counts are
states, not events: only the latest of each waits, and is sent once the verdicts ahead of it
are. Choices:

* in memory, not on disk: the verdict journal already keeps every verdict on disk for the
  line; what a restart of the head loses is only the report of verdicts not yet sent while
  the broker was away (the log says how many). A full queue drops its oldest verdict and
  counts it (``dropped`` in the counts message), so a broker away for days cannot fill the
  head's memory.
* QoS 1 is at-least-once: after a reconnect the broker may get the verdict in flight twice.
  The watcher keys verdicts by (head, verdict id, sample id) and keeps the first.

**The watcher** (:class:`Monitor`, ``glass-inspect fleet``) subscribes to
``glass-inspect/+/+`` with a persistent session (``clean_session`` off, a fixed client id), so
the broker keeps its QoS 1 messages while the watcher itself is away, writes every message to
SQLite and keeps each head's latest state for the table.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import queue
import shutil
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import paho.mqtt.client as mqtt

log = logging.getLogger("glass-inspect.fleet")

PREFIX = "glass-inspect"
KINDS = ("verdict", "health", "counts")


def _utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def topic(head_id: str, kind: str) -> str:
    return f"{PREFIX}/{head_id}/{kind}"


def parse_broker(url: str) -> tuple[str, int, bool]:
    """``mqtt://host[:port]`` or ``mqtts://...`` -> (host, port, tls); ValueError saying
    why."""
    scheme, sep, rest = url.partition("://")
    rest = rest.rstrip("/")
    host, colon, port = rest.rpartition(":") if ":" in rest else (rest, "", "")
    if (not sep or scheme not in ("mqtt", "mqtts") or not host or "/" in host
            or (colon and not (port.isdigit() and 1 <= int(port) <= 65535))):
        raise ValueError(f"expected a broker URL mqtt://HOST:PORT (or mqtts:// for TLS), "
                         f"got {url!r}")
    tls = scheme == "mqtts"
    return host, int(port) if colon else (8883 if tls else 1883), tls


def verdict_message(head_id: str, entry, verdict) -> dict:
    """What the fleet hears of one verdict: no images, no score maps."""
    d = verdict.to_dict()
    return {"head": head_id, "verdict_id": entry.verdict_id, "sample_id": d["sample_id"],
            "status": d["status"], "reason": d["reason"], "defects": d["defects"],
            "flagged_rois": d["flagged_rois"], "timings_s": d["timings_s"],
            "created_utc": d["created_utc"]}


def _client(client_id: str, clean: bool, username: str | None, password: str | None,
            tls: bool, ca_file: str | None) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                    clean_session=clean, protocol=mqtt.MQTTv311)
    if username is not None:
        c.username_pw_set(username, password)
    if tls:
        c.tls_set(ca_certs=ca_file)
    c.reconnect_delay_set(min_delay=1, max_delay=10)
    return c


# -- the head's side ---------------------------------------------------------------------------

class Publisher:
    """One head's reports to the broker (see the module docstring). ``health()`` gives the
    fields of a health message (called from the sender thread)."""

    def __init__(self, host: str, port: int, head_id: str, *, username: str | None = None,
                 password: str | None = None, tls: bool = False, ca_file: str | None = None,
                 queue_size: int = 10_000, health_s: float = 10.0,
                 health: Callable[[], dict] | None = None, keepalive: int = 15) -> None:
        self.head_id = head_id
        self.health_s = health_s
        self.health = health
        self.counts = collections.Counter({"PASS": 0, "FAIL": 0, "ERROR": 0})
        self.dropped = 0  # verdicts the full queue gave up
        self.sent = 0  # verdicts the broker acknowledged
        self.started_utc = _utc()
        self._verdicts: collections.deque[dict] = collections.deque()
        self._limit = queue_size
        self._state: dict[str, dict] = {}  # latest health / counts waiting to go
        self._cond = threading.Condition()
        self._acked: set[int] = set()
        self._connected = threading.Event()
        self._stop = threading.Event()
        self.client = _client(f"{PREFIX}-{head_id}", True, username, password, tls, ca_file)
        self.client.will_set(topic(head_id, "health"), json.dumps(
            {"head": head_id, "state": "offline", "since_utc": self.started_utc}), qos=1,
            retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.address = (host, port)
        self.client.connect_async(host, port, keepalive=keepalive)
        self.client.loop_start()
        self._sender = threading.Thread(target=self._send_loop, name=f"fleet-{head_id}",
                                        daemon=True)
        self._sender.start()
        self._last_health = float("-inf")

    # paho's network thread
    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        if reason.is_failure:
            log.warning("fleet: the broker %s:%d refused the head: %s", *self.address, reason)
            return
        log.info("fleet: connected to the broker %s:%d", *self.address)
        self._connected.set()
        with self._cond:
            self._last_health = float("-inf")  # "serving" again at once, over the last will
            self._cond.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason, properties) -> None:
        if self._connected.is_set() and not self._stop.is_set():  # close() disconnects too
            log.warning("fleet: lost the broker %s:%d (%s); buffering", *self.address, reason)
        self._connected.clear()

    def _on_publish(self, client, userdata, mid, reason, properties) -> None:
        with self._cond:
            self._acked.add(mid)
            self._cond.notify_all()

    # the verdict loop's thread: never blocks on the broker
    def verdict(self, message: dict) -> None:
        status = message.get("status")
        with self._cond:
            if status in self.counts:
                self.counts[status] += 1
            if len(self._verdicts) >= self._limit:
                self._verdicts.popleft()
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 100 == 0:
                    log.warning("fleet: the broker is away and the queue is full; %d verdict "
                                "report(s) dropped so far", self.dropped)
            self._verdicts.append(message)
            self._state["counts"] = self._counts()
            self._cond.notify_all()

    def listener(self, entry, verdict, seconds: float) -> None:
        """The inspection service's verdict listener."""
        self.verdict(verdict_message(self.head_id, entry, verdict))

    def _counts(self) -> dict:
        judged = self.counts["PASS"] + self.counts["FAIL"]
        return {"head": self.head_id, **self.counts,
                "yield": round(self.counts["PASS"] / judged, 4) if judged else None,
                "dropped": self.dropped, "since_utc": self.started_utc, "utc": _utc()}

    def _health(self, state: str = "serving") -> dict:
        fields: dict = {}
        if self.health is not None:
            try:
                fields = dict(self.health())
            except Exception as exc:  # reporting never stops the head
                log.warning("fleet: cannot read the head's health: %s", exc)
        with self._cond:
            pending = len(self._verdicts)
        return {"head": self.head_id, "state": state, **fields, "fleet_queue": pending,
                "fleet_dropped": self.dropped, "utc": _utc()}

    # the sender thread
    def _next(self) -> tuple[str, dict] | None:
        """The next message to send, or None after waiting a while."""
        with self._cond:
            if time.monotonic() - self._last_health >= self.health_s:
                self._last_health = time.monotonic()
                self._state["health"] = None  # made outside the lock (it asks the head)
            if self._verdicts:
                return "verdict", self._verdicts[0]
            for kind in ("counts", "health"):
                if kind in self._state:
                    return kind, self._state[kind]
            self._cond.wait(min(1.0, self.health_s))
            return None

    def _send_loop(self) -> None:
        while not self._stop.is_set():
            if not self._connected.wait(0.5):
                continue
            item = self._next()
            if item is None:
                continue
            kind, msg = item
            if kind == "health":
                msg = self._health()
            if self._publish(kind, msg):
                with self._cond:
                    if kind == "verdict":
                        if self._verdicts and self._verdicts[0] is msg:
                            self._verdicts.popleft()
                        self.sent += 1
                    elif kind == "health" or self._state.get(kind) is msg:
                        self._state.pop(kind, None)

    def _publish(self, kind: str, msg: dict) -> bool:
        """Publish one message and wait until the broker has it (paho re-sends it after a
        reconnect); False when stopping first."""
        info = self.client.publish(topic(self.head_id, kind), json.dumps(msg), qos=1,
                                   retain=kind != "verdict")
        with self._cond:
            while info.mid not in self._acked:
                if self._stop.is_set():
                    return False
                self._cond.wait(0.5)
            self._acked.discard(info.mid)
        return True

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._verdicts)

    def flush(self, timeout: float) -> bool:
        """Wait until every queued verdict has reached the broker; True when it did."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._cond:
                if not self._verdicts and "counts" not in self._state:
                    return True
            time.sleep(0.02)
        return False

    def close(self, timeout: float = 2.0, state: str = "stopped") -> None:
        """Send what can be sent within ``timeout``, say ``state``, and disconnect (no last
        will: the head said goodbye)."""
        if self._connected.is_set():
            self.flush(timeout)
        left = self.pending
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._sender.join(2.0)
        if self._connected.is_set():
            info = self.client.publish(topic(self.head_id, "health"),
                                       json.dumps(self._health(state)), qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout)
        if left:
            log.warning("fleet: %d verdict report(s) not sent (the broker was away); the "
                        "verdict journal has them", left)
        self.client.disconnect()
        self.client.loop_stop()


def start_publisher(settings, head_name: str, inspector, journal, service) -> Publisher:
    """The publisher of a serving head from its ``[fleet]`` settings
    (:class:`edge.config.Fleet`), listening to ``service``'s verdicts."""
    host, port = settings.address

    def health() -> dict:
        out: dict = {}
        report = getattr(inspector, "health", None)
        if report is not None:
            out.update(report())
        out["unacknowledged"] = sum(1 for e in list(journal.by_id.values()) if not e.acked)
        with contextlib.suppress(OSError):
            out["journal_free_mb"] = round(
                shutil.disk_usage(journal.path.resolve().parent).free / 2**20, 1)
        job = service.busy_job()
        out["inspecting"] = job.sample_id if job is not None else None
        return out

    pub = Publisher(host, port, settings.head_id or head_name, username=settings.username,
                    password=settings.password, tls=settings.tls, ca_file=settings.ca_file,
                    queue_size=settings.queue, health_s=settings.health_s, health=health)
    service.listeners.append(pub.listener)
    log.info("fleet: reporting as %s to %s", pub.head_id, settings.broker)
    return pub


# -- the watcher -------------------------------------------------------------------------------

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT, received_utc TEXT NOT NULL, head TEXT NOT NULL,
    kind TEXT NOT NULL, retained INTEGER NOT NULL, payload TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS verdicts (
    head TEXT NOT NULL, verdict_id INTEGER NOT NULL, sample_id TEXT NOT NULL,
    status TEXT NOT NULL, created_utc TEXT, received_utc TEXT NOT NULL, payload TEXT NOT NULL,
    PRIMARY KEY (head, verdict_id, sample_id));
CREATE TABLE IF NOT EXISTS heads (
    head TEXT PRIMARY KEY, health TEXT, counts TEXT, updated_utc TEXT NOT NULL);
"""


@dataclass
class HeadState:
    head: str
    health: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)
    verdicts: int = 0  # distinct verdicts received
    repeats: int = 0  # the same verdict again (QoS 1 re-sends)
    last: dict | None = None  # the latest verdict
    seen: float = 0.0  # time.time() of the last message

    def row(self, now: float) -> list[str]:
        c, h = self.counts, self.health
        y = c.get("yield")
        last = self.last
        return [self.head, str(h.get("state", "?")), f"{now - self.seen:.0f}s",
                str(c.get("PASS", "-")), str(c.get("FAIL", "-")), str(c.get("ERROR", "-")),
                f"{y:.1%}" if isinstance(y, (int, float)) else "-",
                str(h.get("unacknowledged", "-")), str(self.verdicts),
                f"{last['sample_id']} {last['status']}" if last else "-"]


COLUMNS = ["head", "state", "seen", "PASS", "FAIL", "ERROR", "yield", "unacked", "received",
           "last verdict"]


def table(heads: dict[str, HeadState], now: float | None = None) -> str:
    """All heads, one line each, as plain text."""
    now = time.time() if now is None else now
    rows = [COLUMNS] + [heads[h].row(now) for h in sorted(heads)]
    widths = [max(len(r[k]) for r in rows) for k in range(len(COLUMNS))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
             for r in rows]
    return "\n".join(lines[:1] + ["-" * len(lines[0])] + lines[1:])


class Monitor:
    """Subscribes to every head; :meth:`pump` takes what arrived into SQLite and the state
    (in the caller's thread: SQLite connections stay in the thread that made them)."""

    def __init__(self, url: str, db: str | Path | None = None, *,
                 client_id: str | None = None, username: str | None = None,
                 password: str | None = None, ca_file: str | None = None) -> None:
        host, port, tls = parse_broker(url)
        self.heads: dict[str, HeadState] = {}
        self._keys: set[tuple] = set()  # (head, verdict id, sample id) of verdicts taken
        self._inbox: queue.Queue = queue.Queue()
        self.db = sqlite3.connect(db) if db else None
        if self.db is not None:
            self.db.executescript(SCHEMA)
        cid = client_id or f"{PREFIX}-fleet-{socket.gethostname()}"
        self.client = _client(cid[:64], False, username, password, tls, ca_file)
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda c, u, m: self._inbox.put(
            (m.topic, bytes(m.payload), bool(m.retain)))
        self.connected = threading.Event()
        self.refused: str | None = None
        self.address = (host, port)
        self.client.connect_async(host, port, keepalive=15)
        self.client.loop_start()

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        if reason.is_failure:
            self.refused = str(reason)
            return
        client.subscribe(f"{PREFIX}/+/+", qos=1)
        self.connected.set()

    def pump(self, timeout: float = 0.0) -> int:
        """Take the messages that arrived (waiting up to ``timeout`` for the first)."""
        n = 0
        try:
            item = self._inbox.get(timeout=timeout) if timeout > 0 else self._inbox.get_nowait()
        except queue.Empty:
            return 0
        while True:
            self._take(*item)
            n += 1
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
        if self.db is not None:
            self.db.commit()
        return n

    def _take(self, name: str, payload: bytes, retained: bool) -> None:
        parts = name.split("/")
        if len(parts) != 3 or parts[0] != PREFIX or parts[2] not in KINDS:
            return
        head, kind = parts[1], parts[2]
        try:
            msg = json.loads(payload)
            if not isinstance(msg, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            log.warning("fleet: a %s message of %s is not JSON (%s); skipped", kind, head, exc)
            return
        now, utc = time.time(), _utc()
        st = self.heads.setdefault(head, HeadState(head))
        st.seen = now
        text = json.dumps(msg, separators=(",", ":"))
        if self.db is not None:
            self.db.execute("INSERT INTO messages (received_utc, head, kind, retained, payload)"
                            " VALUES (?, ?, ?, ?, ?)", (utc, head, kind, int(retained), text))
        if kind == "verdict":
            key = (head, msg.get("verdict_id"), msg.get("sample_id"))
            new = key not in self._keys
            self._keys.add(key)
            if self.db is not None:
                self.db.execute(
                    "INSERT OR IGNORE INTO verdicts VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (head, int(msg.get("verdict_id", -1)), str(msg.get("sample_id", "")),
                     str(msg.get("status", "")), msg.get("created_utc"), utc, text))
            if new:
                st.verdicts += 1
                st.last = msg
            else:
                st.repeats += 1
            return
        setattr(st, kind, msg)
        if self.db is not None:
            self.db.execute(
                f"INSERT INTO heads (head, {kind}, updated_utc) VALUES (?, ?, ?) "
                f"ON CONFLICT(head) DO UPDATE SET {kind} = excluded.{kind}, "
                "updated_utc = excluded.updated_utc", (head, text, utc))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        if self.db is not None:
            self.db.commit()
            self.db.close()
