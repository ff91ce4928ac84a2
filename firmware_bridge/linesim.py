"""A line-controller simulator (``glass-inspect line-sim``): feed sample ids, check the answers.

For integrators wiring a head, and for our own tests. It does what a line controller does:
HELLO, then for each sample INSPECT and wait for the verdict, acknowledging it, one sample at a
time. It then checks what a line depends on:

* **missing**: no verdict within the timeout;
* **doubled**: a second, *different* verdict (another verdict id) for a sample that already had
  one; repeats of the same verdict are normal and only counted;
* **bad CRC**: lines from the head that failed their checksum. They are never accepted; on a
  clean installation there should be none, so by default any fails the run (``tolerate_noise``
  only reports them, for tests on a deliberately noisy wire).

Sample ids are ``<prefix><seed>-<n>`` (e.g. ``LS00001-0003``): the same seed asks for the same
samples again, which a head answers from its journal without inspecting twice.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from firmware_bridge.client import LineClient, LinkRefused, LinkTimeout


@dataclass
class Report:
    answers: list[dict] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    doubled: list[str] = field(default_factory=list)
    crc_errors: int = 0
    rejected_lines: int = 0
    repeats: int = 0
    resends: int = 0
    head_restarts: int = 0

    def ok(self, tolerate_noise: bool) -> bool:
        return not self.missing and not self.doubled and (tolerate_noise or not self.crc_errors)

    def to_dict(self) -> dict:
        return {"answers": self.answers, "missing": self.missing, "doubled": self.doubled,
                "crc_errors": self.crc_errors, "rejected_lines": self.rejected_lines,
                "verdict_repeats": self.repeats, "resends": self.resends,
                "head_restarts": self.head_restarts}


def sample_ids(count: int, seed: int, prefix: str) -> list[str]:
    return [f"{prefix}{seed:05d}-{k:04d}" for k in range(1, count + 1)]


def run(client: LineClient, ids: list[str], timeout: float,
        say: Callable[[str], None] = print) -> Report:
    rep = Report()
    try:
        version = client.hello(timeout)
        say(f"head answered HELLO: protocol version {version}")
    except (LinkTimeout, LinkRefused) as exc:
        say(f"no session with the head: {exc}")
        rep.missing = list(ids)
        return rep
    asked: set[str] = set()
    for sid in ids:
        t = time.monotonic()
        asked.add(sid)
        try:
            v = client.inspect(sid, timeout)
        except (LinkTimeout, LinkRefused) as exc:
            rep.missing.append(sid)
            say(f"{sid}: MISSING - {exc}")
            continue
        dt = time.monotonic() - t
        rep.answers.append({"sample_id": v.sample_id, "status": v.status.value,
                            "verdict_id": v.verdict_id, "defect_count": v.defect_count,
                            "defects": [[d.x_mm, d.y_mm, d.length_mm, d.peak_score]
                                        for d in v.defects],
                            "reason": v.reason, "seconds": round(dt, 3)})
        say(f"{v.summary()} in {dt:.2f} s")
    # A late, different verdict for a sample we already had is a doubled answer.
    got = {a["sample_id"]: a["verdict_id"] for a in rep.answers}
    for v in client.unsolicited:
        if v.sample_id in asked and got.get(v.sample_id) not in (None, v.verdict_id):
            rep.doubled.append(v.sample_id)
            say(f"{v.sample_id}: DOUBLED - a second verdict {v.verdict_id} after "
                f"{got[v.sample_id]}")
    s = client.stats
    rep.crc_errors = s.crc_errors
    rep.rejected_lines = sum(s.rejected.values())
    rep.repeats, rep.resends, rep.head_restarts = s.verdict_repeats, s.resends, s.head_restarts
    return rep


def describe(rep: Report, total: int) -> str:
    c = Counter(a["status"] for a in rep.answers)
    return (f"{total} sample(s): {c['PASS']} PASS, {c['FAIL']} FAIL, {c['ERROR']} ERROR; "
            f"{len(rep.missing)} missing, {len(rep.doubled)} doubled; "
            f"{rep.crc_errors} line(s) with a bad CRC, {rep.rejected_lines} rejected in all; "
            f"{rep.repeats} verdict repeat(s), {rep.resends} command(s) sent again, "
            f"{rep.head_restarts} head restart(s) or reconnection(s)")


def main(url: str, baud: int, count: int, seed: int, prefix: str, timeout: float,
         tolerate_noise: bool = False, json_path: str | None = None,
         stall_s: float = 5.0, say: Callable[[str], None] = print) -> int:
    ids = sample_ids(count, seed, prefix)
    with LineClient(url, baud, stall_s=stall_s) as client:
        rep = run(client, ids, timeout, say)
    say(describe(rep, len(ids)))
    if json_path:
        Path(json_path).write_text(json.dumps(rep.to_dict(), indent=1) + "\n")
    return 0 if rep.ok(tolerate_noise) else 1
