"""An OPC UA server beside the verdict link (``[opcua]`` in the head file): the essentials of
the OPC 40100 Machine Vision companion specification, for the plant's MES, over the same
inspection service and journal as the PLC's link. ``docs/opcua.md`` has the node tree.

What fits and what does not:

* The vision state machine's states are string variables (``VisionStateMachine/CurrentState``:
  Preoperational, Halted, Error, Operational; ``.../VisionAutomaticModeStateMachine/
  CurrentState``: Initialized, Ready, SingleExecution while operational, else empty), not
  the specification's FiniteStateMachineType instances with transition events; the methods
  carry the specification's names (SelectModeAutomatic, StartSingleJob, Stop, Abort, Reset,
  Halt) but plain arguments (StartSingleJob takes the sample id, returns the job id, which
  is the sample id). The namespace is ours (:data:`NAMESPACE`), not 40100's, since the
  companion specification's type nodes are not loaded: a client browses by name.
* The state machine gates only jobs started over OPC UA. The PLC's link keeps working in any
  state (the line must not stop because the MES has not selected a mode); its jobs show as
  SingleExecution and their results raise the same event. Abort and Halt stop whatever job
  runs (its verdict is ERROR, never PASS).
* Every verdict raises a ``ResultReadyEventType`` event (sample id, verdict number, PASS /
  FAIL / ERROR, defect count, the defects as JSON, reason, who started the job) and is kept
  in ``ResultManagement/LastResult``. A job started over OPC UA is acknowledged in the
  journal once its result is in the address space (OPC UA events are not confirmed by
  clients); a PLC's verdict stays the PLC's to acknowledge.
* Configuration and recipe identity: the head's name and digest (``edge.config``'s, without
  ``[review]`` and ``[opcua]``), the model's SHA-256 and the engine backend.

Threading: asyncua runs in a thread with its own event loop; the inspection service belongs
to the link's thread. A command from a client is queued and run by the service's own
``poll()``, which every link calls on each turn of its loop from that thread (the server hooks
it), so the MES and the PLC never touch the service at the same time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hmac
import json
import logging
import queue
import threading
from pathlib import Path

from edge.errors import UserError
from firmware_bridge import protocol as P
from firmware_bridge.codec import Decoder, Frame
from firmware_bridge.journal import Entry

log = logging.getLogger("glass-inspect.opcua")

NAMESPACE = "urn:glass-inspect:machine-vision"
CALL_TIMEOUT_S = 5.0  # a link loop that does not turn within this is stuck

PREOPERATIONAL, HALTED, ERROR, OPERATIONAL = "Preoperational", "Halted", "Error", "Operational"
INITIALIZED, READY, SINGLE_EXECUTION = "Initialized", "Ready", "SingleExecution"


class OpcuaError(UserError):
    """The OPC UA server cannot start; the message says why."""


def _wire(e: Entry) -> P.WireVerdict:
    frame = next(f for f in Decoder().feed(e.line.encode("ascii") + b"\n")
                 if isinstance(f, Frame))
    return P.WireVerdict.from_frame(frame)


class OpcuaServer:
    """The server, in a thread of its own; :meth:`start` returns once it listens."""

    def __init__(self, settings, link, *, head: str, head_digest: str, model_sha256: str,
                 backend: str, base_dir: Path | None = None) -> None:
        self.settings = settings
        self.link = link
        self.service = link.service
        self.identity = {"HeadName": head, "HeadDigest": head_digest,
                         "ModelSha256": model_sha256, "EngineBackend": backend}
        self.base_dir = base_dir or Path.cwd()
        self.state, self.mode = PREOPERATIONAL, ""
        self.endpoint = settings.endpoint
        self.results = 0
        self._ours: set[str] = set()  # sample ids of jobs started over OPC UA, still running
        self._commands: queue.Queue = queue.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._stopping: asyncio.Event | None = None
        self._failure: BaseException | None = None
        self._nodes: dict[str, object] = {}
        self._types: dict[str, object] = {}  # node name -> its ua.VariantType
        self._attach()

    # -- the link's thread ---------------------------------------------------------------------

    def _attach(self) -> None:
        s = self.service
        poll, on_verdict = s.poll, s.on_verdict

        def hooked_poll() -> None:
            self._drain()
            poll()

        def hooked_verdict(e: Entry) -> None:
            if e.sample_id in self._ours:
                self._ours.discard(e.sample_id)
                s.acknowledge(e.verdict_id, e.sample_id)
                origin = "opcua"
            else:
                on_verdict(e)  # the PLC's verdict: its link delivers it
                origin = "link"
            self._publish(e, origin)

        s.poll, s.on_verdict = hooked_poll, hooked_verdict

    def _drain(self) -> None:
        while True:
            try:
                fn, fut = self._commands.get_nowait()
            except queue.Empty:
                return
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn())
            except Exception as exc:  # noqa: BLE001 - the client gets it as a bad status
                fut.set_exception(exc)

    def _publish(self, e: Entry, origin: str) -> None:
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop is closing
                asyncio.run_coroutine_threadsafe(self._result(e, origin), self._loop)

    # -- the server's thread -------------------------------------------------------------------

    async def _call(self, fn):
        """``fn()`` run in the link's thread, at its next poll."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._commands.put((fn, fut))
        try:
            return await asyncio.wait_for(asyncio.wrap_future(fut), CALL_TIMEOUT_S)
        except asyncio.TimeoutError:
            fut.cancel()
            raise RuntimeError(f"the verdict link did not take the command within "
                               f"{CALL_TIMEOUT_S:g} s") from None

    async def _set(self, name: str, value) -> None:
        from asyncua import ua

        await self._nodes[name].write_value(ua.Variant(value, self._types[name]))

    async def _show_state(self) -> None:
        await self._set("State", self.state)
        await self._set("Mode", self.mode)

    def _error_cause(self) -> str | None:
        s = self.service
        if s.stuck is not None:
            return f"the inspection of {s.stuck.sample_id} did not stop"
        if s.journal_problem:
            return s.journal_problem
        if getattr(self.link, "failed", None):
            return self.link.failed
        return None

    async def _watch(self) -> None:
        """Keep the states in step with the service (Error, SingleExecution, Ready)."""
        while not self._stopping.is_set():
            cause = self._error_cause()
            state, mode = self.state, self.mode
            if cause is not None and state != ERROR:
                log.error("OPC UA vision state Error: %s", cause)
                state, mode = ERROR, ""
            elif state == OPERATIONAL and mode in (READY, SINGLE_EXECUTION):
                mode = SINGLE_EXECUTION if self.service.busy_job() is not None else READY
            if (state, mode) != (self.state, self.mode):
                self.state, self.mode = state, mode
                await self._show_state()
                await self._set("ErrorText", cause or "")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), 0.05)

    async def _result(self, e: Entry, origin: str) -> None:
        try:
            w = _wire(e)
            defects = [{"x_mm": d.x_mm, "y_mm": d.y_mm, "length_mm": d.length_mm,
                        "peak_score": d.peak_score} for d in w.defects]
            fields = {"SampleId": e.sample_id, "VerdictId": e.verdict_id,
                      "Verdict": w.status.value, "DefectCount": w.defect_count,
                      "Defects": json.dumps(defects), "Reason": w.reason, "Origin": origin}
            for k, v in fields.items():
                await self._set(k, v)
            ev = self._events.event
            for k, v in fields.items():
                setattr(ev, k, v)
            await self._events.trigger(message=f"{e.sample_id}: {w.status.value}")
            self.results += 1
        except Exception:
            log.exception("OPC UA: the result of %s could not be published", e.sample_id)

    # -- the methods ---------------------------------------------------------------------------

    def _refuse(self, why: str):
        from asyncua import ua

        log.info("OPC UA method refused: %s", why)
        return ua.StatusCode(ua.StatusCodes.BadInvalidState)

    async def _select_mode_automatic(self, parent):
        if self.state != HALTED:
            return self._refuse(f"SelectModeAutomatic in state {self.state}")
        self.state, self.mode = OPERATIONAL, INITIALIZED
        await self._show_state()
        await self._call(lambda: None)  # the link's loop turns: the head takes jobs
        self.mode = READY
        await self._show_state()
        return []

    async def _start_single_job(self, parent, sample_id):
        from asyncua import ua

        sid = str(sample_id.Value)
        if self.state != OPERATIONAL or self.mode != READY:
            return self._refuse(f"StartSingleJob in state {self.state}/{self.mode or '-'}")
        if not P.valid_sample_id(sid):
            log.info("OPC UA StartSingleJob refused: sample id %r", sid)
            return ua.StatusCode(ua.StatusCodes.BadInvalidArgument)

        def start():
            s = self.service
            busy = s.busy_job()
            if busy is not None:
                return f"busy with {busy.sample_id}"
            e = s.answer(sid)
            if e is not None:  # journaled already: its verdict again, no new inspection
                self._publish(e, "journal")
                return None
            self._ours.add(sid)
            s.start(sid)
            return None

        busy = await self._call(start)
        if busy:
            return self._refuse(busy)
        self.mode = SINGLE_EXECUTION
        await self._show_state()
        return [ua.Variant(sid, ua.VariantType.String)]

    async def _stop_job(self, reason: str) -> None:
        def stop():
            job = self.service.job
            if job is not None:
                self.service.stop(job, reason)
        await self._call(stop)

    async def _stop(self, parent):
        # a single job ends by itself: Stop lets it finish, and the mode is Ready after it
        if self.state != OPERATIONAL:
            return self._refuse(f"Stop in state {self.state}")
        return []

    async def _abort(self, parent):
        if self.state != OPERATIONAL:
            return self._refuse(f"Abort in state {self.state}")
        await self._stop_job("aborted over OPC UA")
        return []

    async def _halt(self, parent):
        if self.state not in (OPERATIONAL, ERROR):
            return self._refuse(f"Halt in state {self.state}")
        await self._stop_job("halted over OPC UA")
        self.state, self.mode = HALTED, ""
        await self._show_state()
        return []

    async def _reset(self, parent):
        if self.state != ERROR:
            return self._refuse(f"Reset in state {self.state}")
        cause = self._error_cause()
        if cause is not None:
            return self._refuse(f"Reset while {cause}")
        self.state, self.mode = HALTED, ""
        await self._show_state()
        await self._set("ErrorText", "")
        return []

    # -- the address space ---------------------------------------------------------------------

    def _users(self):
        from asyncua.crypto.permission_rules import User, UserRole

        s = self.settings

        class Users:
            def get_user(self, iserver, username=None, password=None, certificate=None):
                # no user token is offered for certificates: no name is an anonymous login
                if username is None:
                    return User(role=UserRole.User) if s.anonymous else None
                if s.username is not None and username is not None and \
                        hmac.compare_digest(username.encode(), s.username.encode()) and \
                        hmac.compare_digest((password or "").encode(), s.password.encode()):
                    return User(role=UserRole.User, name=username)
                log.warning("OPC UA: login refused for user %r", username)
                return None

        return Users()

    async def _build(self, server) -> None:
        from asyncua import ua

        idx = await server.register_namespace(NAMESPACE)
        objects = server.nodes.objects

        def nid(path: str) -> ua.NodeId:
            return ua.NodeId(path, idx)

        def qn(name: str) -> ua.QualifiedName:  # browse names in our namespace, not in 0
            return ua.QualifiedName(name, idx)

        SM = "VisionSystem.VisionStateMachine"  # noqa: N806 - a path, read like a constant
        vs = await objects.add_object(nid("VisionSystem"), qn("VisionSystem"))
        await vs.set_event_notifier([ua.EventNotifier.SubscribeToEvents])
        sm = await vs.add_object(nid("VisionSystem.VisionStateMachine"), qn("VisionStateMachine"))
        auto = await sm.add_object(nid("VisionSystem.VisionStateMachine.AutomaticMode"),
                                   qn("VisionAutomaticModeStateMachine"))
        n, t = self._nodes, self._types
        t["State"] = t["ErrorText"] = t["Mode"] = ua.VariantType.String
        n["State"] = await sm.add_variable(nid("VisionSystem.VisionStateMachine.CurrentState"),
                                           qn("CurrentState"), self.state, ua.VariantType.String)
        n["ErrorText"] = await sm.add_variable(nid("VisionSystem.VisionStateMachine.ErrorText"),
                                               qn("ErrorText"), "", ua.VariantType.String)
        n["Mode"] = await auto.add_variable(
            nid("VisionSystem.VisionStateMachine.AutomaticMode.CurrentState"), qn("CurrentState"),
            self.mode, ua.VariantType.String)
        for name, fn in (("SelectModeAutomatic", self._select_mode_automatic),
                         ("Halt", self._halt), ("Reset", self._reset)):
            await sm.add_method(nid(f"{SM}.{name}"), qn(name), fn, [], [])
        start = ua.Argument(Name="SampleId", DataType=ua.NodeId(ua.ObjectIds.String),
                            ValueRank=-1, Description=ua.LocalizedText(
                                "1-64 of A-Z a-z 0-9 _ . -"))
        job = ua.Argument(Name="JobId", DataType=ua.NodeId(ua.ObjectIds.String), ValueRank=-1)
        await auto.add_method(nid("VisionSystem.VisionStateMachine.AutomaticMode.StartSingleJob"),
                              qn("StartSingleJob"), self._start_single_job, [start], [job])
        for name, fn in (("Stop", self._stop), ("Abort", self._abort)):
            await auto.add_method(nid(f"VisionSystem.VisionStateMachine.AutomaticMode.{name}"),
                                  qn(name), fn, [], [])
        cm = await vs.add_object(nid("VisionSystem.ConfigurationManagement"),
                                 qn("ConfigurationManagement"))
        for name in ("HeadName", "HeadDigest"):
            await cm.add_variable(nid(f"VisionSystem.ConfigurationManagement.{name}"), qn(name),
                                  self.identity[name], ua.VariantType.String)
        rm = await vs.add_object(nid("VisionSystem.RecipeManagement"), qn("RecipeManagement"))
        for name in ("ModelSha256", "EngineBackend"):
            await rm.add_variable(nid(f"VisionSystem.RecipeManagement.{name}"), qn(name),
                                  self.identity[name], ua.VariantType.String)
        res = await vs.add_object(nid("VisionSystem.ResultManagement"), qn("ResultManagement"))
        last = await res.add_object(nid("VisionSystem.ResultManagement.LastResult"),
                                    qn("LastResult"))
        fields = (("SampleId", ua.VariantType.String, ""), ("VerdictId", ua.VariantType.UInt32, 0),
                  ("Verdict", ua.VariantType.String, ""),
                  ("DefectCount", ua.VariantType.UInt32, 0),
                  ("Defects", ua.VariantType.String, "[]"), ("Reason", ua.VariantType.String, ""),
                  ("Origin", ua.VariantType.String, ""))
        for name, vt, init in fields:
            t[name] = vt
            n[name] = await last.add_variable(
                nid(f"VisionSystem.ResultManagement.LastResult.{name}"), qn(name), init, vt)
        etype = await server.create_custom_event_type(
            idx, "ResultReadyEventType", ua.ObjectIds.BaseEventType,
            [(name, vt) for name, vt, _ in fields])
        self.event_type = etype
        self._events = await server.get_event_generator(etype, vs)

    async def _main(self) -> None:
        from asyncua import Server, ua

        s = self.settings
        self._stopping = asyncio.Event()
        server = Server(user_manager=self._users())
        await server.init()
        server.set_endpoint(s.endpoint)
        server.set_server_name(f"glass-inspect head {self.identity['HeadName']}")
        await server.set_application_uri(f"{NAMESPACE}:{self.identity['HeadName']}")
        if s.certificate:
            await server.load_certificate(str(self._path(s.certificate)))
            await server.load_private_key(str(self._path(s.private_key)))
            server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
        else:
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        tokens = ([ua.AnonymousIdentityToken] if s.anonymous else []) + \
            ([ua.UserNameIdentityToken] if s.username else [])
        server.set_identity_tokens(tokens)
        await self._build(server)
        async with server:
            self.state = HALTED  # ready to be put in a mode
            await self._show_state()
            self._started.set()
            log.info("OPC UA server on %s (%s; %s)", s.endpoint,
                     "Basic256Sha256 sign and encrypt" if s.certificate else "no encryption",
                     ", ".join(filter(None, ("anonymous" if s.anonymous else "",
                                             f"user {s.username}" if s.username else ""))))
            await self._watch()

    def _path(self, p: str) -> Path:
        path = Path(p).expanduser()
        path = path if path.is_absolute() else self.base_dir / path
        if not path.is_file():
            raise OpcuaError(f"[opcua]: {path} does not exist")
        return path

    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:  # noqa: BLE001 - start() reports it
            self._failure = exc
            if self._started.is_set():
                log.exception("the OPC UA server failed")
        finally:
            self._started.set()
            loop.close()

    def start(self, timeout_s: float = 30.0) -> None:
        """Serve in a thread; returns once the endpoint listens, or raises
        :class:`OpcuaError` saying why it cannot."""
        try:
            import asyncua  # noqa: F401
        except ImportError:
            raise OpcuaError("[opcua] needs asyncua: pip install 'glass-inspect[opcua]'") \
                from None
        self._thread = threading.Thread(target=self._thread_main, name="opcua", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout_s):
            raise OpcuaError(f"the OPC UA server on {self.endpoint} did not start within "
                             f"{timeout_s:g} s")
        if self._failure is not None:
            exc = self._failure
            why = str(exc) if isinstance(exc, OpcuaError) else f"{type(exc).__name__}: {exc}"
            raise OpcuaError(f"cannot serve OPC UA on {self.endpoint}: {why}") from exc

    def close(self) -> None:
        self.stop()

    def stop(self) -> None:
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stopping.set)
        if self._thread is not None:
            self._thread.join(10)


def start_beside(settings, link, inspector, cfg) -> OpcuaServer:
    """The ``[opcua]`` server of head ``cfg`` beside ``link``, started."""
    engine = getattr(inspector, "engine", None) or {}
    server = OpcuaServer(settings, link, head=cfg.name, head_digest=cfg.digest(),
                         model_sha256=str(engine.get("model_sha256") or
                                          cfg.engine.model_sha256 or ""),
                         backend=str(engine.get("backend", "")), base_dir=cfg.base_dir)
    server.start()
    return server
