"""The arm behind a small network interface (`moss-arm-server`, rig/arm_server_cli.py): franky and libfranka on the
real-time PC, the 10 Hz loop, camera, display and policy on the GPU box (DROID's split). `RemoteArm` is the
`Arm` (robot/interfaces.py) the loop uses on the other side; the wire format is moss_vla/wire.py.

    hello    {token}                                 -> hello {watchdog_s}                       (first message)
    state    {}                                      -> state {gripper_width}  q, dq
    command  {gripper_width?}  q                     -> ok                     check + send one joint target
    stop / recover                                   -> ok
    move_to  {relative_dynamics_factor, timeout}  q  -> ok {finished}          blocking point-to-point motion
    any failure                                      -> error {kind, recoverable, message, violations?}

Safety on the arm side: the served arm runs its own checks (FrankaArm / SimArm with the `safety` block of
its config, robot/safety.py) on every target, whatever the client checked; a target that is not 7 finite
numbers is refused before it reaches the arm. One controlling client at a time (another gets an error).

The watchdog: while the client streams targets (a `command` since the last stop), a silence longer than
`watchdog_s` from that client (other connections do not count) stops the arm (`Arm.stop()`: decelerate and
hold), and so does a lost connection, at once; a watchdog stop is logged and every later `command`, from
this client or the next one, is refused (kind "watchdog") until a client calls `recover`, so a stream never
resumes silently. During `move_to` the motion is bounded by itself and a lost
connection stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from moss_vla.wire import ProtocolError, Service, WireError, check_bind, decode, encode, parse_address
from robot.interfaces import ArmState
from robot.safety import ArmError, SafetyChecker, SafetyLimits, UnsafeTargetError

log = logging.getLogger("robot.arm_server")

MAX_MESSAGE = 64 * 1024  # joint vectors and short headers only


class ArmServer(Service):
    """Serves `arm` (an `Arm`: FrankaArm, SimArm) to one client at a time, with a watchdog (module docstring).
    `host`, `port`, `watchdog_s`: configs/arm_server.yaml's (its rules check the watchdog's range)."""

    log = log
    expected_errors = (WireError, ProtocolError, ArmError)

    def __init__(self, arm: Any, *, host: str, port: int, watchdog_s: float, token: str | None = None,
                 allow_remote: bool = False, kind: str = "") -> None:
        check_bind(host, allow_remote, token, "moss-arm-server")
        self.arm, self.host, self.port, self.token = arm, host, int(port), token
        self.kind = kind or {"FrankaArm": "franka", "SimArm": "sim"}.get(type(arm).__name__, type(arm).__name__)
        self.watchdog_s = float(watchdog_s)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="arm")  # one thread talks to the arm
        self._client: Any = None
        self._last_message = 0.0
        self._streaming = False  # a command since the last stop: the watchdog is armed
        self._tripped = ""  # why the watchdog stopped the arm ("": it did not); commands refused until recover
        self._lost = threading.Event()  # the client went away during a blocking move_to
        self.stops: list[dict[str, Any]] = []  # every watchdog / disconnect stop: {why, silence_s, at}
        self._init_service()

    # ---- running -------------------------------------------------------------------------------------
    async def serve(self) -> None:
        from websockets.asyncio.server import serve

        self._stop_event = asyncio.Event()
        watchdog = asyncio.create_task(self._watchdog())
        try:
            async with serve(self._handle, self.host, self.port, max_size=MAX_MESSAGE, compression=None,
                             ping_interval=1, ping_timeout=2) as server:
                self._listening(server)
                log.info("serving the arm on ws://%s:%d (watchdog %.3f s)", self.host, self.port, self.watchdog_s)
                await self._stop_event.wait()
        finally:
            watchdog.cancel()
            await asyncio.get_running_loop().run_in_executor(self._pool, self._safe_stop)
            self._pool.shutdown(wait=True)

    def _safe_stop(self) -> None:
        try:
            self.arm.stop()
        except Exception as e:  # noqa: BLE001 - a stop in a cleanup path must not raise
            log.warning("arm stop failed: %s: %s", type(e).__name__, e)

    async def _halt(self, why: str) -> None:
        silence = time.monotonic() - self._last_message
        self._streaming = False
        await asyncio.get_running_loop().run_in_executor(self._pool, self._safe_stop)
        self.stops.append({"why": why, "silence_s": silence, "at": time.monotonic()})
        log.warning("stopped the arm: %s (%.3f s since the client's last message)", why, silence)

    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(self.watchdog_s / 10)
            if self._streaming and time.monotonic() - self._last_message > self.watchdog_s:
                self._tripped = f"no message from the client for more than {self.watchdog_s} s"
                await self._halt(f"watchdog: {self._tripped}")

    # ---- one connection (wire.Service._handle runs it) --------------------------------------------------
    def _heard(self, ws: Any) -> None:
        if ws is self._client:  # only the controlling client's messages feed the watchdog
            self._last_message = time.monotonic()

    async def _hello(self, ws: Any, peer: str, header: dict[str, Any]) -> tuple[Any, bytes]:
        if self._client is not None:
            raise ArmError("the arm is controlled by another client", kind="busy", recoverable=False)
        self._client, self._last_message = ws, time.monotonic()  # a watchdog trip stays until recover
        log.info("client %s connected", peer)
        return ws, encode({"op": "hello", "seq": header.get("seq"), "watchdog_s": self.watchdog_s, "arm": self.kind})

    async def _message(self, ws: Any, op: str, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> bytes:
        return await self._request(op, header, arrays)

    async def _closed(self, ws: Any, peer: str, conn: Any) -> None:
        if conn is not None and self._client is ws:
            self._lost.set()
            self._client = None
            await self._halt(f"client {peer} disconnected")
            self._lost.clear()

    async def _request(self, op: str, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> bytes:
        run = asyncio.get_running_loop().run_in_executor
        seq = header.get("seq")
        if op == "state":
            s: ArmState = await run(self._pool, self.arm.state)
            return encode({"op": "state", "seq": seq, "gripper_width": float(s.gripper_width)},
                          {"q": np.asarray(s.q, np.float64), "dq": np.asarray(s.dq, np.float64)})
        if op == "command":
            if self._tripped:
                raise ArmError(f"the arm server stopped the arm ({self._tripped}); call recover() before streaming "
                               f"again", kind="watchdog")
            q = _joints(arrays)
            width = header.get("gripper_width")
            if width is not None and not (isinstance(width, (int, float)) and np.isfinite(width)):
                raise ArmError(f"gripper_width must be a finite number, got {width!r}", kind="unsafe_target")
            self._streaming = True
            await run(self._pool, self.arm.command, q, None if width is None else float(width))
            return encode({"op": "ok", "seq": seq})
        if op == "stop":
            self._streaming = False
            await run(self._pool, self._safe_stop)
            return encode({"op": "ok", "seq": seq})
        if op == "recover":
            self._tripped = ""
            recover = getattr(self.arm, "recover", None)
            if recover is not None:
                await run(self._pool, recover)
            return encode({"op": "ok", "seq": seq})
        if op == "move_to":
            q = _joints(arrays)
            move_to = getattr(self.arm, "move_to", None)
            if move_to is None:
                raise ArmError(f"{type(self.arm).__name__} has no move_to", kind="command")
            self._streaming, self._tripped = False, ""
            factor = header.get("relative_dynamics_factor")
            timeout = float(header.get("timeout") or 30.0)
            finished = await run(self._pool, lambda: move_to(q, relative_dynamics_factor=factor, timeout=timeout,
                                                             should_stop=self._lost.is_set))
            return encode({"op": "ok", "seq": seq, "finished": bool(finished)})
        raise ArmError(f"unknown op {op!r} (hello, state, command, stop, recover, move_to)", kind="protocol")

    def _error_reply(self, conn: Any, seq: int | None, e: Exception) -> bytes:
        kind = getattr(e, "kind", "protocol" if isinstance(e, (WireError, ProtocolError)) else "arm")
        return encode({"op": "error", "seq": seq, "kind": kind,
                       "recoverable": bool(getattr(e, "recoverable", True)), "message": str(e)[:2000],
                       "violations": list(getattr(e, "violations", []) or [])})


def _joints(arrays: dict[str, np.ndarray]) -> np.ndarray:
    q = arrays.get("q")
    if q is None or q.shape != (7,) or not np.all(np.isfinite(q)):
        got = None if q is None else np.asarray(q).tolist()
        raise UnsafeTargetError([f"a target must be 7 finite joint positions, got {got}"])
    return np.array(q, dtype=np.float64)


class RemoteArm:
    """The `Arm` served by an ArmServer at `address` (host:port): state, command, stop, close, plus recover and
    move_to like FrankaArm. Errors come back as ArmError / UnsafeTargetError with the server's kind; a reply
    that does not come within `timeout` s or a lost connection raises ArmError(kind="network"). `clock`
    stamps states on this side's clock (the session clock)."""

    def __init__(self, address: str, *, timeout: float, token: str | None = None,
                 clock: Callable[[], float] = time.monotonic, scheme: str = "ws", serves: str | None = None,
                 safety: SafetyChecker | None = None) -> None:
        from websockets.sync.client import connect

        host, port = parse_address(address, "arm.address")
        self.address, self.timeout, self._clock = f"{host}:{port}", float(timeout), clock
        try:
            # entered by hand: websockets 17 warns about a connection opened outside a `with` block; _drop closes it
            self._ws = connect(f"{scheme}://{host}:{port}", open_timeout=5, close_timeout=1, compression=None,
                               max_size=MAX_MESSAGE).__enter__()
        except Exception as e:
            raise ArmError(f"cannot reach the arm server at {self.address}: {type(e).__name__}: {e} (is "
                           f"moss-arm-server running there, and the SSH tunnel up?)", kind="network",
                           recoverable=False) from e
        self._seq = 0
        # this side's checks (configs/arm/remote.yaml `safety`): with mode clip the loop's targets are rate-limited
        # here, against the stream the server sees, so the server's own (reject) checks pass them
        self.safety, self._last_target, self._q_measured = safety, None, None
        try:
            reply, _ = self._call({"op": "hello", "token": token})
        except BaseException:
            self._drop()  # a refused hello leaves no open socket behind
            raise
        self.watchdog_s, self.serves = float(reply["watchdog_s"]), str(reply.get("arm"))
        if serves is not None and self.serves != serves:
            self.close()
            raise ArmError(f"the arm server at {self.address} drives arm={self.serves}, this rig expects arm.serves="
                           f"{serves} (configs/arm/remote.yaml)", kind="setup", recoverable=False)

    def _call(self, header: dict[str, Any], arrays: dict[str, np.ndarray] | None = None,
              timeout: float | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        if self._ws is None:
            raise ArmError(f"the connection to the arm server at {self.address} is closed", kind="network",
                           recoverable=False)
        self._seq += 1
        try:
            self._ws.send(encode({**header, "seq": self._seq}, arrays))
            reply, out = decode(self._ws.recv(timeout=self.timeout if timeout is None else timeout))
        except Exception as e:
            self._drop()
            raise ArmError(f"arm server at {self.address}: no reply to {header['op']} ({type(e).__name__}: {e}); "
                           f"its watchdog stops the arm", kind="network", recoverable=False) from e
        if reply["op"] == "error":
            if reply.get("kind") == "unsafe_target" and reply.get("violations"):
                raise UnsafeTargetError(reply["violations"])
            raise ArmError(f"arm server: {reply.get('message')}", kind=str(reply.get("kind") or "arm"),
                           recoverable=bool(reply.get("recoverable", True)))
        return reply, out

    def _drop(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            with contextlib.suppress(Exception):  # it is being dropped anyway
                ws.close()

    def state(self) -> ArmState:
        reply, out = self._call({"op": "state"})
        self._q_measured = np.array(out["q"])
        return ArmState(q=self._q_measured.copy(), dq=np.array(out["dq"]),
                        gripper_width=float(reply["gripper_width"]), timestamp=self._clock())

    def command(self, q_target: np.ndarray, gripper_width: float | None = None) -> None:
        q = np.asarray(q_target, dtype=np.float64)
        if self.safety is not None:
            if self._q_measured is None:
                self.state()
            q = self.safety.check(q, self._q_measured, self._last_target)
            if gripper_width is not None:
                gripper_width = self.safety.check_gripper(gripper_width)
        self._call({"op": "command", "gripper_width": None if gripper_width is None else float(gripper_width)},
                   {"q": q})
        self._last_target = q

    def stop(self) -> None:
        """Never raises (cleanup paths); a lost connection has stopped the arm on the server already."""
        self._last_target = None  # the next target starts a new stream (the server's arm forgets its last too)
        try:
            self._call({"op": "stop"})
        except ArmError as e:
            log.warning("RemoteArm.stop: %s", e)

    def recover(self) -> None:
        self._last_target = None
        self._call({"op": "recover"}, timeout=max(self.timeout, 10.0))

    def move_to(self, q_goal: np.ndarray, relative_dynamics_factor: float | None = None, timeout: float = 30.0,
                should_stop: Callable[[], bool] | None = None) -> bool:
        """Blocking point-to-point motion on the server. (`should_stop` is not forwarded: a Ctrl-C here drops
        the connection, which stops the arm on the server.)"""
        self._last_target = None
        try:
            reply, _ = self._call({"op": "move_to", "relative_dynamics_factor": relative_dynamics_factor,
                                   "timeout": float(timeout)}, {"q": np.asarray(q_goal, dtype=np.float64)},
                                  timeout=float(timeout) + 5.0)
        except KeyboardInterrupt:
            self._drop()  # the server stops the motion when the connection goes
            raise
        return bool(reply.get("finished", True))

    def close(self) -> None:
        if self._ws is not None:
            self.stop()
        self._drop()

    @classmethod
    def from_config(cls, cfg: Any, clock: Callable[[], float] = time.monotonic) -> RemoteArm:
        """From configs/arm/remote.yaml: address, token, timeout, serves, safety."""
        safety = SafetyChecker(SafetyLimits.from_config(cfg["safety"])) if cfg.get("safety") else None
        return cls(str(cfg["address"]), token=cfg.get("token") or None, timeout=float(cfg["timeout"]), clock=clock,
                   serves=cfg.get("serves"), safety=safety)
