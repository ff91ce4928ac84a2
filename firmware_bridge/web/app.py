"""The head's web page: a Starlette app, server-rendered with Jinja2, no script.

Pages: ``/`` the live state (refreshes itself every second), ``/sample/ID`` one sample (its
verdict drawn in mm, its RoIs, the six states of one RoI, the labelling form when it was kept),
``/head`` the head (head file, calibration pictures, engine, health), ``/review`` the samples
kept for review; ``/metrics`` where :mod:`firmware_bridge.metrics` is installed. Two requests
change something, both POST with the token and the CSRF check (:mod:`firmware_bridge.web.guard`):
``/sample/ID/labels`` (writes ``labels.json`` through :mod:`edge.labels_sample`) and ``/abort``.

Paths never come from the request: a sample is addressed by its id, checked against the
recorded-sample id rule (with the ``~N`` the review keeper adds to a repeated id), and looked
up as a folder directly inside the head's review folder; the calibration pictures have fixed
names in the calibration's folder.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from firmware_bridge.web import guard
from firmware_bridge.web import pictures as pic
from firmware_bridge.web_state import WebState

KEPT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}(~[0-9]{1,6})?$")
CALIBRATION_PICTURES = ("dark.png", "flat.png", "geometry.png")
HEAD_TEXT_LIMIT = 64 * 1024
LISTED = 200  # kept samples on the review page, newest first
_TOKEN_LINE = re.compile(r'^(\s*token\s*=\s*)(["\']).*?\2', re.M)

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).with_name("templates")))


@dataclass
class Site:
    """What the page may show and do: the service's published state, the head file, the
    review folder, and the one action it may take on the service (abort)."""

    state: WebState
    cfg: object = None  # edge.config.HeadConfig, or None (the page then shows less)
    engine: dict = field(default_factory=dict)
    inspector: str = "head"
    health_file: str | None = None
    token: str = ""
    abort: object = None  # callable(reason) or None
    pictures: pic.Cache = field(default_factory=pic.Cache)

    @property
    def review_dir(self) -> Path | None:
        if self.cfg is None or self.cfg.review is None:
            return None
        return self.cfg.resolve(self.cfg.review.dir)

    @property
    def roi_mm(self) -> tuple[float, float]:
        if self.cfg is None:
            return (40.0, 35.0)
        return tuple(self.cfg.stage.roi_grid.size_mm)

    def kept(self, sample: str) -> Path | None:
        """The kept sample folder of id ``sample`` (checked), or None."""
        root = self.review_dir
        if root is None or not KEPT_ID.match(sample):
            return None
        folder = root / sample
        try:
            if folder.is_dir() and folder.resolve().parent == root.resolve():
                return folder
        except OSError:
            pass
        return None


def _utc(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _page(request: Request, name: str, context: dict, status: int = 200) -> Response:
    """A page, with the CSRF cookie its forms repeat (set once per browser)."""
    site: Site = request.app.state.site
    csrf = request.cookies.get(guard.CSRF_COOKIE) or guard.new_csrf()
    context = {"site": site, "csrf": csrf, "utc": _utc, "now": time.time(), **context}
    response = TEMPLATES.TemplateResponse(request, name, context, status_code=status)
    if request.cookies.get(guard.CSRF_COOKIE) != csrf:
        response.set_cookie(guard.CSRF_COOKIE, csrf, httponly=True, samesite="strict",
                            path="/")
    return response


def _refused(request: Request, why: str, status: int = 403) -> Response:
    return _page(request, "refused.html", {"why": why}, status)


def _read_verdict(folder: Path) -> dict | None:
    from edge.review import VERDICT

    try:
        return json.loads((folder / VERDICT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# -- pages -----------------------------------------------------------------------------------
async def live(request: Request) -> Response:
    site: Site = request.app.state.site
    snap = site.state.snapshot()
    maps = {v.verdict_id: pic.verdict_map(v.record, site.roi_mm) for v in snap.verdicts}
    newest_fail = next((v for v in snap.verdicts if v.status == "FAIL"), None)
    picture = None
    if newest_fail is not None and site.kept(newest_fail.sample_id) is not None:
        flagged = newest_fail.record.get("flagged_rois") or []
        if flagged:
            picture = (newest_fail.sample_id, flagged[0])
    return _page(request, "live.html", {"snap": snap, "maps": maps, "picture": picture})


def _sample_id(request: Request) -> str | None:
    sid = request.path_params["sample"]
    return sid if KEPT_ID.match(sid) else None


async def sample(request: Request) -> Response:
    site: Site = request.app.state.site
    sid = _sample_id(request)
    if sid is None:
        return _refused(request, "not a sample id (1-64 letters, digits, '_', '.', '-')", 404)
    folder = site.kept(sid)
    record = _read_verdict(folder) if folder is not None else None
    shown = site.state.snapshot().find(sid)
    if record is None and shown is not None:
        record = shown.record
    if record is None:
        return _refused(request, f"no sample {sid}: neither among the last verdicts nor kept "
                                 "for review", 404)
    rois, proposals, labels, problem = [], [], None, None
    if folder is not None:
        from edge.labels_sample import LABELS, SampleLabelError, from_verdict
        from edge.recording import MANIFEST

        if (folder / MANIFEST).is_file():
            rois = [r["index"] for r in record.get("rois") or []]
            try:
                proposals, _ = from_verdict(folder)
            except (SampleLabelError, OSError, ValueError) as exc:
                problem = str(exc)
        if (folder / LABELS).is_file():
            with contextlib.suppress(OSError, ValueError):
                labels = json.loads((folder / LABELS).read_text(encoding="utf-8"))
    flagged = record.get("flagged_rois") or []
    try:
        chosen = int(request.query_params.get("roi", flagged[0] if flagged else 0))
    except ValueError:
        chosen = 0
    if rois and chosen not in rois:
        chosen = rois[0]
    return _page(request, "sample.html", {
        "sid": sid, "record": record, "kept": folder is not None, "rois": rois,
        "chosen": chosen, "map": pic.verdict_map(record, site.roi_mm), "proposals": proposals,
        "labels": labels, "problem": problem, "saved": request.query_params.get("saved"),
        "flagged": flagged})


async def picture(request: Request) -> Response:
    site: Site = request.app.state.site
    sid, kind = _sample_id(request), request.path_params["kind"]
    index = request.path_params["index"]
    folder = site.kept(sid) if sid else None
    if folder is None or kind not in ("roi", "states"):
        return PlainTextResponse("no such picture\n", status_code=404)
    from edge.recording import RecordingError

    stamp = (folder / "verdict.json").stat().st_mtime_ns if (folder / "verdict.json").exists() \
        else 0
    t_low = site.cfg.pipeline.t_low if site.cfg is not None else 0.3

    def make() -> bytes:
        if kind == "roi":
            return pic.roi_picture(folder, index, t_low)
        return pic.states_picture(folder, index)

    try:
        data = site.pictures.get((str(folder), stamp, kind, index), make)
    except (RecordingError, StopIteration, OSError, ValueError):
        return PlainTextResponse(f"RoI {index} of {sid} has no kept frames\n", status_code=404)
    return Response(data, media_type="image/png")


async def label(request: Request) -> Response:
    site: Site = request.app.state.site
    form = await request.form()
    why = guard.refusal(request, form, site.token)
    if why is not None:
        return _refused(request, why)
    sid = _sample_id(request)
    folder = site.kept(sid) if sid else None
    if folder is None:
        return _refused(request, f"no kept sample {request.path_params['sample']!r} in the "
                                 "review folder", 404)
    from edge.label_cli import parse_points
    from edge.labels_sample import (
        SampleLabelError,
        SampleLabels,
        Scratch,
        from_verdict,
        now_utc,
        pixel_um,
        sample_area_mm,
        write_labels,
    )

    area = sample_area_mm(folder)
    if area is None:
        return _refused(request, f"{sid}: no frames were recorded (an ERROR before the first "
                                 "RoI): nothing to label", 409)
    proposals, _ = from_verdict(folder)
    clean = form.get("action") == "clean"
    scratches = []
    if not clean:
        for k, s in enumerate(proposals):
            answer = form.get(f"defect-{k}")
            if answer not in ("scratch", "not"):
                return _refused(request, f"defect {k + 1}: say whether it is a scratch or "
                                         "not", 400)
            if answer == "scratch":
                scratches.append(Scratch(s.points_mm, s.width_um, "network", s.note))
        missed = str(form.get("missed") or "").strip()
        if missed:
            try:
                scratches.append(Scratch(parse_points(missed), pixel_um(folder), "operator"))
            except ValueError as exc:
                return _refused(request, f"the missed scratch: {exc}", 400)
        if not scratches:
            return _refused(request, "no scratch confirmed: mark the sample clean instead, or "
                                     "type the scratch the network missed", 400)
    by = str(form.get("by") or "").strip()[:80] or "operator (web page)"
    labels = SampleLabels(area[0], clean, tuple(scratches), (), by, now_utc())
    try:
        write_labels(folder, labels, overwrite=True)
    except SampleLabelError as exc:
        return _refused(request, str(exc), 400)
    return RedirectResponse(f"/sample/{sid}?saved=1", status_code=303)


async def abort(request: Request) -> Response:
    site: Site = request.app.state.site
    if request.method == "GET":  # the form, on a page that does not refresh under the typing
        return _page(request, "abort.html", {"snap": site.state.snapshot()})
    form = await request.form()
    why = guard.refusal(request, form, site.token)
    if why is not None:
        return _refused(request, why)
    snap = site.state.snapshot()
    if site.abort is None or snap.sample_id is None:
        return _refused(request, "nothing is being inspected", 409)
    site.abort("aborted by the operator on the web page")
    return RedirectResponse("/", status_code=303)


async def review(request: Request) -> Response:
    site: Site = request.app.state.site
    from edge.labels_sample import LABELS
    from edge.review import VERDICT

    root, rows = site.review_dir, []
    if root is not None and root.is_dir():
        found = []
        for p in root.iterdir():
            if p.name.startswith(".") or not KEPT_ID.match(p.name):
                continue
            with contextlib.suppress(OSError):
                found.append(((p / VERDICT).stat().st_mtime, p))
        found.sort(reverse=True)
        for when, p in found[:LISTED]:
            record = _read_verdict(p) or {}
            rows.append({"id": p.name, "when": when, "status": record.get("status", "?"),
                         "why": (record.get("review") or {}).get("why", ""),
                         "defects": len(record.get("defects") or []),
                         "labelled": (p / LABELS).is_file()})
        total = len(found)
    else:
        total = 0
    return _page(request, "review.html", {"rows": rows, "total": total, "root": root})


def _head_text(site: Site) -> str:
    from edge.config import DEFAULT_NAME, default_text

    cfg = site.cfg
    if cfg is None:
        return "(no head file)"
    try:
        text = default_text() if cfg.source == DEFAULT_NAME else \
            Path(cfg.source).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"(cannot read {cfg.source}: {exc})"
    text = _TOKEN_LINE.sub(r'\1"(hidden)"', text)
    if len(text) > HEAD_TEXT_LIMIT:
        text = text[:HEAD_TEXT_LIMIT] + f"\n... (cut at {HEAD_TEXT_LIMIT} characters)"
    return text


def _calibration_dir(site: Site) -> Path | None:
    cfg = site.cfg
    if cfg is None or not cfg.calibration.file:
        return None
    return cfg.resolve(cfg.calibration.file).parent


async def head(request: Request) -> Response:
    site: Site = request.app.state.site
    from firmware_bridge.health import check_health

    if site.health_file:
        healthy, health = check_health(site.health_file)
    else:
        healthy, health = None, ("no heartbeat to check: serve runs without --health "
                                 "(glass-inspect health reads the file it keeps)")
    folder = _calibration_dir(site)
    shown = [n for n in CALIBRATION_PICTURES if folder is not None and (folder / n).is_file()]
    return _page(request, "head.html", {
        "text": _head_text(site), "summary": site.cfg.summary() if site.cfg else [],
        "healthy": healthy, "health": health, "calibration": shown, "cal_dir": folder})


async def calibration_picture(request: Request) -> Response:
    site: Site = request.app.state.site
    name = request.path_params["name"]
    folder = _calibration_dir(site)
    if name not in CALIBRATION_PICTURES or folder is None or not (folder / name).is_file():
        return PlainTextResponse("no such calibration picture\n", status_code=404)
    return Response((folder / name).read_bytes(), media_type="image/png")


async def metrics(request: Request) -> Response:
    """The Prometheus exposition of :mod:`firmware_bridge.metrics`, where it is installed."""
    try:
        from firmware_bridge.metrics import CONTENT_TYPE_LATEST, exposition
    except ImportError as exc:
        return PlainTextResponse(f"metrics are not available here: {exc}\n", status_code=404)
    return Response(exposition(), media_type=CONTENT_TYPE_LATEST)


def make_app(site: Site, *, rate: float = 20.0, burst: float = 60.0,
             max_body: int = 16 * 1024) -> guard.Guard:
    """The page as an ASGI app, behind its guard."""
    routes = [
        Route("/", live),
        Route("/sample/{sample}", sample),
        Route("/sample/{sample}/{kind}/{index:int}.png", picture),
        Route("/sample/{sample}/labels", label, methods=["POST"]),
        Route("/abort", abort, methods=["GET", "POST"]),
        Route("/review", review),
        Route("/head", head),
        Route("/head/calibration/{name}", calibration_picture),
        Route("/metrics", metrics),
    ]
    app = Starlette(routes=routes)
    app.state.site = site
    return guard.Guard(app, guard.TokenBuckets(rate, burst), max_body)
