"""Three heads report to one mosquitto, one of them is cut off from it for a while: does the
watcher get every verdict of every head exactly once and in order (issue 33)?

The broker is Debian's mosquitto on a free local port (``tests/firmware_bridge/
mqtt_broker.py``, the helper the fleet's tests use). Each head is a
:class:`firmware_bridge.fleet.Publisher` (what ``serve`` runs) fed with the verdict
messages of a scripted inspector (:class:`firmware_bridge.inspector.ScriptedInspector`, no
inspection time: what is measured is the fleet, not the optics), one verdict per head every
``--interval-ms``, from ``--before-s`` before the cut to ``--after-s`` after it. A real head
gives a verdict every few seconds; 50 ms is many times that, so the queue that builds up
while the broker is away, and its draining afterwards, are larger than on a line.

The cut head reaches the broker through a small TCP proxy in this process. At the cut the
proxy stops relaying in both directions and holds the sockets open without a word (a pulled
cable, not a closed connection: neither end sees a FIN, so the broker notices only when the
head's keep-alive (15 s) has expired one and a half times, and then publishes the head's last
will); new connections are accepted and closed at once. After ``--cut-s`` the proxy closes
the stale connection and relays again; paho-mqtt's reconnect (1 to 10 s apart, so up to 10 s
after a long outage) brings the head back.

The watcher is :class:`firmware_bridge.fleet.Monitor` with its SQLite file (what
``glass-inspect fleet --db`` runs), connected to the broker directly. Judged from that file,
per head: ``sent`` (verdicts the head gave its publisher), ``received`` (distinct rows in the
``verdicts`` table), ``duplicates`` (rows of a verdict id beyond its first), ``out_of_order``
(rows, in arrival order, whose verdict id is not the previous one plus one), ``missing``
(verdict ids sent and never received), ``wrong_sample`` (rows whose sample id is not the
one sent under that verdict id); ``redelivered`` (verdict messages the broker delivered again,
which the watcher dropped: QoS 1 is at least once). For the cut head: ``will_after_s`` (cut
to the watcher seeing ``state: offline``; null if it never did, as for a cut shorter than the
keep-alive allows), ``reconnect_s`` (cut end to the publisher connected again),
``drain_s`` (cut end to every verdict sent so far at the watcher), ``queued_at_reconnect``.

    python benchmarks/fleet.py [--cut-s 30] [--interval-ms 50] [--before-s 5] [--after-s 5]

Prints one JSON object; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import select
import shutil
import socket
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from firmware_bridge.fleet import Monitor, Publisher, verdict_message  # noqa: E402
from firmware_bridge.inspector import ScriptedInspector  # noqa: E402
from tests.firmware_bridge.mqtt_broker import MISSING, Broker, free_port  # noqa: E402

HEADS = ("line1-head", "line2-head", "line3-head")
CUT = "line3-head"
KEEPALIVE_S = 15  # the Publisher's default, as serve runs it


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class CutProxy:
    """A TCP relay to ``target`` that can be cut (see the module docstring)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._listen = socket.create_server(("127.0.0.1", self.port))
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self.cut = threading.Event()
        self._stop = threading.Event()
        self.refused = 0
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        self._listen.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self._listen.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.cut.is_set():
                self.refused += 1
                conn.close()
                continue
            try:
                up = socket.create_connection(self.target, timeout=2)
            except OSError:
                conn.close()
                continue
            with self._lock:
                self._pairs.append((conn, up))
            t = threading.Thread(target=self._relay, args=(conn, up), daemon=True)
            t.start()

    def _relay(self, a: socket.socket, b: socket.socket) -> None:
        other = {a: b, b: a}
        try:
            while not self._stop.is_set():
                if self.cut.is_set():  # silence: nothing read, nothing passed on
                    time.sleep(0.05)
                    continue
                ready, _, _ = select.select([a, b], [], [], 0.05)
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    other[s].sendall(data)
        except (OSError, ValueError):  # ValueError: end_cut() closed the pair meanwhile
            return
        finally:
            self._drop(a, b)

    def _drop(self, a: socket.socket, b: socket.socket) -> None:
        with self._lock:
            if (a, b) in self._pairs:
                self._pairs.remove((a, b))
        for s in (a, b):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def start_cut(self) -> None:
        self.cut.set()

    def end_cut(self) -> None:
        """Close what was held through the cut, then relay new connections again."""
        with self._lock:
            stale = list(self._pairs)
        for a, b in stale:
            self._drop(a, b)
        self.cut.clear()

    def close(self) -> None:
        self._stop.set()
        self._listen.close()
        with self._lock:
            stale = list(self._pairs)
        for a, b in stale:
            self._drop(a, b)


def judge(db: Path, sent: dict[str, list[str]]) -> dict[str, dict]:
    """Per head, what the watcher's SQLite file holds against what was sent."""
    con = sqlite3.connect(db)
    out = {}
    for head, samples in sent.items():
        rows = con.execute("SELECT verdict_id, sample_id FROM verdicts WHERE head = ? "
                           "ORDER BY rowid", (head,)).fetchall()
        ids = [r[0] for r in rows]
        seen: set[int] = set()
        dup = ooo = wrong = 0
        prev = 0
        for vid, sid in rows:
            dup += vid in seen
            seen.add(vid)
            ooo += vid != prev + 1
            prev = vid
            wrong += not (1 <= vid <= len(samples) and samples[vid - 1] == sid)
        raw = con.execute("SELECT COUNT(*) FROM messages WHERE head = ? AND kind = 'verdict'",
                          (head,)).fetchone()[0]
        out[head] = {"sent": len(samples), "received": len(seen), "duplicates": dup,
                     "out_of_order": ooo, "missing": len(set(range(1, len(samples) + 1))
                                                         - set(ids)),
                     "wrong_sample": wrong, "redelivered": raw - len(rows)}
    con.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cut-s", type=float, default=30.0,
                    help="how long the third head is cut off from the broker (default 30)")
    ap.add_argument("--interval-ms", type=float, default=50.0,
                    help="one verdict per head every this many ms (default 50)")
    ap.add_argument("--before-s", type=float, default=5.0, help="verdicts before the cut")
    ap.add_argument("--after-s", type=float, default=5.0,
                    help="verdicts after the cut ends (the drain is waited for as well)")
    args = ap.parse_args()
    if MISSING:
        ap.error(MISSING)
    if min(args.cut_s, args.interval_ms, args.before_s, args.after_s) <= 0:
        ap.error("--cut-s, --interval-ms, --before-s and --after-s must be positive")

    base = Path(tempfile.mkdtemp(prefix="glass-fleet-"))
    t_all = time.monotonic()
    broker = Broker(base / "broker")
    proxy = CutProxy(("127.0.0.1", broker.port))
    db = base / "fleet.sqlite"
    mon = Monitor(broker.url, db, client_id="bench-fleet-watcher")
    pubs = {h: Publisher("127.0.0.1", proxy.port if h == CUT else broker.port, h,
                         health_s=1.0, keepalive=KEEPALIVE_S) for h in HEADS}
    insp = ScriptedInspector()
    sent: dict[str, list[str]] = {h: [] for h in HEADS}
    marks: dict[str, float | None] = {"will": None, "reconnect": None, "drain": None}
    cut_head = SimpleNamespace(queued_at_reconnect=None, states=[], connects=[])
    on_connect = pubs[CUT].client.on_connect

    def connected(*a) -> None:  # when paho got the broker's CONNACK, for reconnect_s
        cut_head.connects.append(time.monotonic())
        on_connect(*a)

    pubs[CUT].client.on_connect = connected
    try:
        if not mon.connected.wait(10):
            raise RuntimeError("the watcher could not connect to mosquitto")

        def pump(now: float, t_cut: float | None, t_back: float | None) -> None:
            mon.pump(0.0)
            st = mon.heads.get(CUT)
            state = st.health.get("state") if st else None
            if not cut_head.states or cut_head.states[-1][1] != state:
                cut_head.states.append((now, state))
            if t_cut is not None and marks["will"] is None and state == "offline":
                marks["will"] = now - t_cut
            if t_back is not None:
                again = [t for t in cut_head.connects if t >= t_back]
                if marks["reconnect"] is None and again:
                    marks["reconnect"] = again[0] - t_back
                    cut_head.queued_at_reconnect = pubs[CUT].pending
                if marks["drain"] is None and st is not None \
                        and st.verdicts >= len(sent[CUT]) > 0 and pubs[CUT].pending == 0:
                    marks["drain"] = now - t_back

        step = args.interval_ms / 1000.0
        phases = [("before", args.before_s), ("cut", args.cut_s), ("after", args.after_s)]
        t_cut = t_back = None
        nxt = time.monotonic()
        for phase, length in phases:
            say(f"{phase}: {length:g} s")
            if phase == "cut":
                proxy.start_cut()
                t_cut = time.monotonic()
            elif phase == "after":
                proxy.end_cut()
                t_back = time.monotonic()
            end = time.monotonic() + length
            while time.monotonic() < end:
                for h, p in pubs.items():
                    sid = f"{h}-S{len(sent[h]) + 1:05d}"
                    v = insp.inspect(sid, threading.Event(), lambda d, t: None)
                    sent[h].append(sid)
                    p.verdict(verdict_message(h, SimpleNamespace(verdict_id=len(sent[h])), v))
                nxt += step
                while (left := nxt - time.monotonic()) > 0:
                    pump(time.monotonic(), t_cut, t_back)
                    time.sleep(min(left, 0.01))
        say("waiting for the drain")
        deadline = time.monotonic() + 60.0
        while time.monotonic() < deadline:
            pump(time.monotonic(), t_cut, t_back)
            if all(mon.heads.get(h) and mon.heads[h].verdicts >= len(sent[h]) for h in HEADS):
                break
            time.sleep(0.02)
        time.sleep(1.0)  # a late re-send would land now
        pump(time.monotonic(), t_cut, t_back)
    finally:
        for p in pubs.values():
            p.close()
        mon.close()
        proxy.close()
        broker.stop()
    per_head = judge(db, sent)
    shutil.rmtree(base, ignore_errors=True)
    total = {k: sum(r[k] for r in per_head.values())
             for k in ("sent", "received", "duplicates", "out_of_order", "missing",
                       "wrong_sample", "redelivered")}

    def r3(x: float | None) -> float | None:
        return None if x is None else round(x, 3)

    print(json.dumps({
        "heads": len(HEADS), "verdicts": total["sent"], "missing": total["missing"],
        "duplicates": total["duplicates"], "out_of_order": total["out_of_order"],
        "wrong_sample": total["wrong_sample"], "redelivered": total["redelivered"],
        "per_head": [{"head": h, **per_head[h]} for h in HEADS],
        "cut": {"head": CUT, "cut_s": args.cut_s, "keepalive_s": KEEPALIVE_S,
                "will_after_s": r3(marks["will"]), "reconnect_s": r3(marks["reconnect"]),
                "drain_s": r3(marks["drain"]),
                "queued_at_reconnect": cut_head.queued_at_reconnect,
                "refused_connects": proxy.refused,
                "states_at_watcher": [f"{t - t_cut:+.2f} s {s}" for t, s in cut_head.states
                                      if s is not None]},
        "interval_ms": args.interval_ms, "before_s": args.before_s, "after_s": args.after_s,
        "seconds": round(time.monotonic() - t_all, 1)}, indent=1))
    ok = total["missing"] == total["duplicates"] == total["out_of_order"] == 0 \
        and total["wrong_sample"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
