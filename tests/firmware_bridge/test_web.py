"""The operator web page without a browser (Starlette's TestClient): the pages show what the
service published, a kept sample's pictures and labels, and every guard: token, CSRF, paths,
rates, body sizes; the service's hooks into the page's state."""

import json
import re
import threading
import time

import pytest

pytest.importorskip("starlette")
pytest.importorskip("multipart")
pytest.importorskip("httpx")

from starlette.testclient import TestClient  # noqa: E402

from edge import config, review  # noqa: E402
from edge.config import Review  # noqa: E402
from edge.labels_sample import read_labels  # noqa: E402
from edge.verdict import Defect, RoiResult, Status, decide  # noqa: E402
from firmware_bridge.web import guard  # noqa: E402
from firmware_bridge.web.app import Site, make_app  # noqa: E402
from firmware_bridge.web.server import WebError, parse_listen, token_for  # noqa: E402
from firmware_bridge.web_state import WebState  # noqa: E402
from tests.conftest import small_head_data  # noqa: E402

TOKEN = "line-7-token-0123456789"


@pytest.fixture
def head(tmp_path):
    d = small_head_data()
    d["review"] = {"dir": str(tmp_path / "kept"), "budget_gb": 1.0}
    d["web"] = {"token": TOKEN}
    d["calibration"] = {"file": str(tmp_path / "cal" / "calibration.npz")}
    (tmp_path / "cal").mkdir()
    path = tmp_path / "head.toml"
    path.write_text(f'# a head\n[web]\ntoken = "{TOKEN}"\n')  # what the head page shows
    cfg = config.parse(d, str(path))
    return cfg


def failed_verdict(sid="F1"):
    d = Defect((0.1, 0.1, 0.5, 0.2), 0.41, 0.93, (0,))
    results = [RoiResult(0, (0.0, 0.0), [d], {}, 1, False),
               RoiResult(1, (1.0, 0.0), [], {}, 1, False)]
    return decide(sid, results, 2, {"model_sha256": "ab" * 32}, None, {})


def passed_verdict(sid):
    return decide(sid, [RoiResult(0, (0.0, 0.0), [], {}, 1, False),
                        RoiResult(1, (1.0, 0.0), [], {}, 1, False)], 2, {}, None, {})


def keep_failed(cfg, sid="F1"):
    """A FAIL kept for review as the head keeps it: 2 RoIs of 6 x 64 x 64 px, score maps."""
    r = Review(dir=cfg.review.dir, budget_gb=1.0)
    k = review.Keeper(r, cfg, 0.6, seed=1)
    c = review.Collector()
    for i in range(2):
        import numpy as np

        score = np.full((32, 32), -0.5, np.float32)
        score[5, 5:20] = 0.95
        frames = np.full((6, 64, 64), 100 + i, np.uint16)
        frames[:, 10, 10:40] = 3000
        c(RoiResult(i, cfg.stage.roi_grid.roi_origin_mm(i), [], {}, 1, False, [], score),
          frames)
    v = failed_verdict(sid)
    assert k.finish(c, v) == review.FAIL
    k.close()
    return v


def client_for(cfg, state=None, token=TOKEN, **limits):
    site = Site(state or WebState(), cfg, {"backend": "onnxruntime", "model_sha256": "ab" * 32},
                "head", None, token, None)
    return TestClient(make_app(site, **limits)), site


def csrf_of(client, path="/review"):
    r = client.get(path)
    assert r.status_code == 200
    return client.cookies[guard.CSRF_COOKIE]


def test_the_live_page_shows_state_counts_and_each_verdict_with_its_map(head):
    state = WebState(keep=3)
    client, _ = client_for(head, state)
    r = client.get("/")
    assert r.status_code == 200 and 'id="state">ready' in r.text and "No verdict yet" in r.text
    assert '<meta http-equiv="refresh" content="1">' in r.text
    state.inspecting("S-2")
    state.progress("S-2", 1, 2)
    r = client.get("/")
    assert 'id="state">busy' in r.text and "taking RoI 1 of 2" in r.text
    state.verdict(7, failed_verdict("S-2").to_dict(), 1.25)
    for k in range(3):
        state.verdict(8 + k, passed_verdict(f"P{k}").to_dict(), 0.75)
    r = client.get("/")
    assert 'id="state">ready' in r.text
    assert 'id="n-pass">3<' in r.text and 'id="n-fail">1<' in r.text
    assert 'id="yield">75.0 %' in r.text and 'id="mean-s">0.88 s' in r.text
    # keep=3: the FAIL went off the list, the counts keep it
    assert "verdict-7" not in r.text and "verdict-10" in r.text
    state2 = WebState()
    state2.verdict(7, failed_verdict("S-2").to_dict(), 1.25)
    r = client_for(head, state2)[0].get("/")
    block = r.text[r.text.index('id="verdict-7"'):]
    assert 'data-status="FAIL"' in block and 'class="defect"' in block
    assert "0.4 mm, 0.93" in block  # the kept scratch's length and score on the map


def test_a_kept_sample_shows_its_rois_states_and_defects(head):
    keep_failed(head)
    client, _ = client_for(head)
    r = client.get("/sample/F1")
    assert r.status_code == 200 and 'id="status">FAIL' in r.text
    assert '/sample/F1/roi/0.png' in r.text and '/sample/F1/roi/1.png' in r.text
    assert '/sample/F1/states/0.png' in r.text and "0.41 mm" in r.text and "0.930" in r.text
    assert 'name="defect-0"' in r.text and 'name="csrf"' in r.text
    for path in ("/sample/F1/roi/0.png", "/sample/F1/states/1.png"):
        p = client.get(path)
        assert p.status_code == 200 and p.headers["content-type"] == "image/png"
        assert p.content[:8] == b"\x89PNG\r\n\x1a\n" and len(p.content) < 2_000_000
    assert client.get("/sample/F1/roi/5.png").status_code == 404
    assert client.get("/sample/F1/other/0.png").status_code == 404
    r = client.get("/review")
    assert 'href="/sample/F1"' in r.text and "to do" in r.text


def test_labelling_needs_the_token_and_the_csrf_check_and_writes_labels_json(head, tmp_path):
    keep_failed(head)
    client, _ = client_for(head)
    csrf = csrf_of(client, "/sample/F1")
    labels = tmp_path / "kept" / "F1" / "labels.json"
    form = {"csrf": csrf, "defect-0": "scratch", "action": "scratches"}
    r = client.post("/sample/F1/labels", data=form)  # no token
    assert r.status_code == 403 and "wrong or missing token" in r.text and not labels.exists()
    r = client.post("/sample/F1/labels", data=form | {"token": TOKEN + "x"})
    assert r.status_code == 403 and not labels.exists()
    r = client.post("/sample/F1/labels", data=form | {"token": TOKEN, "csrf": "forged"})
    assert r.status_code == 403 and "CSRF" in r.text and not labels.exists()
    r = client.post("/sample/F1/labels", data=form | {"token": TOKEN},
                    headers={"origin": "http://evil.example"})
    assert r.status_code == 403 and "another site" in r.text and not labels.exists()
    r = client.post("/sample/F1/labels", data={"csrf": csrf, "token": TOKEN,
                                               "action": "scratches"})
    assert r.status_code == 400 and "defect 1" in r.text and not labels.exists()
    r = client.post("/sample/F1/labels", data=form | {"token": TOKEN, "by": "Ana"},
                    follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/sample/F1?saved=1"
    got = read_labels(tmp_path / "kept" / "F1")
    assert not got.clean and len(got.scratches) == 1 and got.labelled_by == "Ana"
    assert got.scratches[0].source == "network"
    r = client.post("/sample/F1/labels", data={"csrf": csrf, "token": TOKEN,
                                               "action": "clean"})
    assert r.status_code == 200 and 'id="saved"' in r.text and "clean" in r.text
    assert read_labels(tmp_path / "kept" / "F1").clean
    assert "labelled" in client.get("/review").text


def test_a_page_without_a_token_is_read_only(head):
    keep_failed(head)
    client, _ = client_for(head, token="")
    csrf = csrf_of(client)
    r = client.post("/sample/F1/labels", data={"csrf": csrf, "token": "", "action": "clean"})
    assert r.status_code == 403 and "read-only" in r.text


def test_paths_never_come_from_the_request(head, tmp_path):
    keep_failed(head)
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "verdict.json").write_text(json.dumps(failed_verdict("secret").to_dict()))
    (tmp_path / "kept" / "link").symlink_to(outside)
    client, site = client_for(head)
    for sid in ("link", "F1~x", ".incoming", "a" * 65, "F1%2F..%2F..%2Fsecret", "%2E%2E"):
        assert client.get(f"/sample/{sid}").status_code == 404, sid
    assert site.kept("link") is None and site.kept("..") is None
    assert site.kept("F1") is not None
    assert client.get("/head/calibration/..%2Fhead.toml").status_code == 404
    assert client.get("/head/calibration/report.json").status_code == 404


def test_the_head_page_hides_the_token_and_shows_engine_health_and_calibration(head, tmp_path):
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "cal" / "flat.png")
    client, _ = client_for(head)
    r = client.get("/head")
    assert r.status_code == 200 and TOKEN not in r.text and 'token = &#34;(hidden)&#34;' in r.text
    assert "onnxruntime" in r.text and "ab" * 32 in r.text
    assert "serve runs without --health" in r.text
    assert '/head/calibration/flat.png' in r.text and "dark.png" not in r.text.split("<h2>Head")[0]
    p = client.get("/head/calibration/flat.png")
    assert p.status_code == 200 and p.content[:4] == b"\x89PNG"


def test_every_answer_carries_the_security_headers(head):
    client, _ = client_for(head)
    r = client.get("/")
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie


def test_requests_over_the_rate_or_body_limit_are_refused(head):
    client, _ = client_for(head, rate=1.0, burst=3.0, max_body=1024)
    codes = [client.get("/").status_code for _ in range(5)]
    assert codes[:3] == [200] * 3 and codes[3] == 429
    r = client.get("/")
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    client, _ = client_for(head, max_body=1024)
    r = client.post("/abort", content=b"x" * 2048,
                    headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 413


def test_token_buckets_refill_at_their_rate():
    b = guard.TokenBuckets(rate=2.0, burst=2.0, clients=2)
    assert [b.take("a", 0.0), b.take("a", 0.0)] == [0.0, 0.0]
    assert b.take("a", 0.0) == pytest.approx(0.5)
    assert b.take("a", 0.5) == 0.0  # one token back after 0.5 s
    b.take("b", 1.0)
    b.take("c", 1.0)  # only two clients remembered: "a" is forgotten, starts full
    assert b.take("a", 1.0) == 0.0 and b.take("a", 1.0) == 0.0


def test_abort_needs_the_token_and_stops_the_running_inspection(head):
    state = WebState()
    reasons = []
    site = Site(state, head, {}, "head", None, TOKEN, reasons.append)
    client = TestClient(make_app(site))
    csrf = csrf_of(client, "/abort")
    assert client.post("/abort", data={"csrf": csrf, "token": TOKEN}).status_code == 409
    state.inspecting("S-9")
    assert "Abort S-9" in client.get("/abort").text
    assert client.post("/abort", data={"csrf": csrf}).status_code == 403 and not reasons
    r = client.post("/abort", data={"csrf": csrf, "token": TOKEN}, follow_redirects=False)
    assert r.status_code == 303 and reasons == ["aborted by the operator on the web page"]


def test_listen_address_and_token_sources(head, monkeypatch):
    assert parse_listen("8080") == ("127.0.0.1", 8080)
    assert parse_listen(":0") == ("127.0.0.1", 0)
    assert parse_listen("0.0.0.0:81") == ("0.0.0.0", 81)
    for bad in ("host:http", "70000", "x"):
        with pytest.raises(WebError, match="HOST:PORT"):
            parse_listen(bad)
    monkeypatch.delenv(guard.TOKEN_ENV, raising=False)
    assert token_for(head) == TOKEN and token_for(None) == ""
    monkeypatch.setenv(guard.TOKEN_ENV, "from-the-environment-1")
    assert token_for(head) == "from-the-environment-1"
    monkeypatch.setenv(guard.TOKEN_ENV, "short")
    with pytest.raises(WebError, match="16 to 256"):
        token_for(head)


def test_web_section_is_validated_and_outside_the_head_digest():
    d = small_head_data()
    plain = config.parse(d).digest()
    d["web"] = {"token": TOKEN}
    assert config.parse(d).digest() == plain
    d["web"] = {"token": "too short"}
    with pytest.raises(config.ConfigError) as e:
        config.parse(d, "h.toml")
    assert "web: token: expected 16 to 256 characters" in str(e.value)
    assert "too short" not in str(e.value)  # a secret is not echoed


def test_the_service_publishes_starts_progress_and_verdicts(tmp_path):
    from firmware_bridge.inspection import InspectionService
    from firmware_bridge.inspector import ScriptedInspector
    from firmware_bridge.journal import Journal

    journal = Journal(tmp_path / "j.jsonl")
    service = InspectionService(ScriptedInspector(roi_time_s=0.01, script={"W1": Status.FAIL}),
                                journal)
    state = WebState()
    service.web = state
    service.listeners.append(lambda e, v, s: state.verdict(e.verdict_id, v.to_dict(), s))
    seen = []
    service.start("W1")
    end = time.monotonic() + 10
    while service.busy_job() is not None and time.monotonic() < end:
        service.wait(0.05)
        service.poll()
        snap = state.snapshot()
        seen.append((snap.state, snap.roi))
    snap = state.snapshot()
    journal.close()
    assert ("busy", 0) in seen or ("busy", 1) in seen
    assert snap.state == "ready" and snap.counts["FAIL"] == 1 and snap.verdicts[0].status == "FAIL"
    assert re.fullmatch(r"W1", snap.verdicts[0].sample_id) and snap.mean_s > 0


def test_a_publish_never_raises_into_the_service():
    state = WebState()
    state.verdict(1, {"no": "status"}, 0.1)  # logged, not raised
    assert state.snapshot().total == 0
    threading.Thread(target=state.snapshot).start()
