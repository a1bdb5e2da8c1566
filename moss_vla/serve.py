"""The policy server (`moss-serve`, rig/serve_cli.py): a policy on one machine (the GPU box), the 10 Hz loop
on another, talking websockets with raw numpy payloads (moss_vla/wire.py; never pickle).

One connection = one session = one rig. A session keeps its own streaming state of the policy (frame
window, per-frame cache, queued actions, ACT ensembler, its inference settings and its torch RNG), so two
rigs served at once never see each other's frames; the weights are shared and every policy call runs on
one worker thread, so sessions take turns on the device. The protocol is what `ChunkPlanner`
(robot/chunk_planner.py) asks of a policy, one request and one reply each:

    hello   {token, settings}                      -> hello {session, config, max_message, rtc}   (first message)
    reset   {seq, seed}                            -> ok       new episode; `seed` seeds the session's RNG
    observe {seq, t, instruction} image, state     -> ok       the step's frame into the window
    plan    {seq, t, instruction, [rtc]} state, [rtc_prefix] -> chunk  actions (H, A) float32 of the window so far
    act     {seq, t, instruction} image, state     -> action   select_action (observe + the policy's own replanning)
    any error                                      -> error {seq, kind, message}   (and one log line)

A plan may carry real-time chunking's request (planner.rtc, moss_vla/rtc.py): `rtc` {delay, execution_horizon,
max_guidance_weight, prefix_attention_schedule} and the previous chunk's remainder as the array `rtc_prefix`
(n, A) float32; hello's reply says whether the served policy takes it (`rtc`).

Requests carry `seq` (1, 2, 3, ... per session) and the client's send time `t`, echoed in the reply with the
server's compute time, so the client measures the round trip. A message that is malformed, over the size
limit (`max_message`: an 8-frame window of the policy's images plus headroom; beyond 4x that the transport
closes the connection, websocket code 1009), out of order (a `seq` that is not the next one, a plan before
any observe of the episode, a request before hello; error kind "protocol") or refused by the policy (any
exception it raises, logged with its traceback; kind "policy") gets an error reply; the session stays usable
and no other session notices. A request in order uses its `seq` even when it fails, so the next one is
`seq + 1`; RemotePolicy drops the connection after a "protocol" error all the same (the next episode
reconnects), and goes on after a "policy" one. A wrong token gets an error and the connection is closed
(code 1008).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from moss_vla.rtc import RTCRequest
from moss_vla.wire import ProtocolError, Service, WireError, check_bind, decode, encode

log = logging.getLogger("moss_vla.serve")

# the inference choices a client may set for its own session (as moss-sim eval / moss-trial set them locally)
SETTINGS = {"n_action_steps": int, "inference_seed": int, "use_cache": bool, "temporal_ensemble_coeff": float}
HEADROOM = 64 * 1024  # bytes over the image window for headers, state and instruction
TRANSPORT_FACTOR = 4  # messages over max_message * this are cut by the transport (close code 1009)


def window_bytes(config: Any) -> int:
    """The size limit of one message: an `n_frames` window of the policy's uint8 images, plus headroom."""
    s = int(config.input_image_size)
    return int(config.n_frames) * s * s * 3 + HEADROOM


def config_summary(config: Any) -> dict[str, Any]:
    """What a client needs of the policy's config (robot/chunk_planner.py and the rig commands read these)."""
    return {"n_action_steps": int(config.n_action_steps), "action_dim": int(config.action_dim),
            "state_dim": int(config.state_dim), "n_frames": int(config.n_frames),
            "input_image_size": int(config.input_image_size), "horizon": int(config.action_head.horizon),
            "inference_seed": config.inference_seed, "use_cache": bool(config.use_cache),
            "temporal_ensemble_coeff": config.temporal_ensemble_coeff, "variant": str(config.variant)}


@dataclasses.dataclass
class _Session:
    id: int
    peer: str
    config: Any
    seq: int = 0
    observed: bool = False  # an observe since the last reset: a plan has a window
    state: dict[str, Any] | None = None  # the policy's loop state while another session runs
    rng: tuple[torch.Tensor, list[torch.Tensor]] | None = None


class PolicyServer(Service):
    """Serves `policy` (reset / observe / plan / select_action, `config`, and `loop_state()` /
    `set_loop_state()`: MossVLAPolicy, GrootN15Policy, LeRobotPolicy) to rigs.

    `host`/`port`: where to listen (port 0: any free port, see `.port`); beyond loopback only with
    `allow_remote` and a `token` (moss_vla/wire.py `check_bind`); `label`: what the server says it serves."""

    log = log
    expected_errors = (WireError, ProtocolError)

    def __init__(self, policy: Any, *, host: str, port: int, token: str | None = None, allow_remote: bool = False,
                 label: str = "") -> None:
        check_bind(host, allow_remote, token, "moss-serve")
        self.policy, self.host, self.port, self.token, self.label = policy, host, int(port), token, label
        self.base_config = policy.config
        self.max_message = window_bytes(self.base_config)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="policy")  # sessions take turns on the device
        self._current: _Session | None = None
        self._ids = itertools.count(1)
        self.sessions: dict[int, _Session] = {}
        self._init_service()

    # ---- running -------------------------------------------------------------------------------------
    async def serve(self) -> None:
        """Listen until `stop()`."""
        from websockets.asyncio.server import serve

        self._stop_event = asyncio.Event()
        async with serve(self._handle, self.host, self.port, max_size=TRANSPORT_FACTOR * self.max_message,
                         compression=None, ping_interval=5, ping_timeout=10) as server:
            self._listening(server)
            log.info("serving %s on ws://%s:%d (message limit %d bytes)", self.label or "a policy", self.host,
                     self.port, self.max_message)
            await self._stop_event.wait()
        self._pool.shutdown(wait=True)

    # ---- one connection (wire.Service._handle runs it) --------------------------------------------------
    def _decode(self, message: bytes | str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        if len(message) > self.max_message:
            raise WireError(f"message of {len(message)} bytes is over the limit of {self.max_message} "
                            f"(an {self.base_config.n_frames}-frame window of "
                            f"{self.base_config.input_image_size} px images)")
        return decode(message)

    async def _hello(self, ws: Any, peer: str, header: dict[str, Any]) -> tuple[_Session, bytes]:
        session = self._open(peer, header.get("settings") or {})
        return session, encode({"op": "hello", "session": session.id, "label": self.label,
                                "config": config_summary(session.config), "max_message": self.max_message,
                                "rtc": bool(getattr(self.policy, "supports_rtc", False))})

    async def _message(self, session: _Session, op: str, header: dict[str, Any],
                       arrays: dict[str, np.ndarray]) -> bytes:
        seq = header.get("seq")
        if seq != session.seq + 1:
            raise ProtocolError(f"out of order: seq {seq!r} after {session.seq} (want {session.seq + 1})")
        session.seq = seq  # used, whether or not the request succeeds: the client numbers on from it
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._request, session, op, header, arrays)

    def _error_reply(self, session: _Session | None, seq: int | None, e: Exception) -> bytes:
        """`kind`: "protocol" (the request broke the protocol: the client drops the connection) or "policy" (the
        policy refused or failed it: the session goes on)."""
        protocol = isinstance(e, (WireError, ProtocolError))
        text = str(e) if protocol else f"{type(e).__name__}: {e}"
        return encode({"op": "error", "seq": seq, "kind": "protocol" if protocol else "policy", "message": text[:2000]})

    async def _closed(self, ws: Any, peer: str, session: _Session | None) -> None:
        if session is not None:
            log.info("session %d (%s) ended", session.id, peer)
            self._pool.submit(self._close, session)

    def _conn_name(self, session: _Session | None, peer: str) -> str:
        return f"session {session.id if session else '-'} ({peer})"

    def _open(self, peer: str, settings: dict[str, Any]) -> _Session:
        if not isinstance(settings, dict) or set(settings) - set(SETTINGS):
            raise ProtocolError(f"hello settings must be a dict of {sorted(SETTINGS)}, got {settings!r}")
        given = {k: SETTINGS[k](v) for k, v in settings.items() if v is not None}
        config = dataclasses.replace(self.base_config, **given)  # validates (e.g. ensembling needs 1 step)
        session = _Session(next(self._ids), peer, config)
        self.sessions[session.id] = session
        log.info("session %d opened by %s (settings %s)", session.id, peer, given or "the checkpoint's")
        return session

    def warm_up(self) -> float:
        """Plan once on a blank frame before serving (the first plan builds the sampler's trace, slow enough
        to make a rig's first chunk late); the RNG is left as it was. Returns the seconds it took."""
        t0, rng = time.perf_counter(), _rng_state()
        session = _Session(0, "warm-up", self.base_config)
        s = int(self.base_config.input_image_size)
        obs = {"image": np.zeros((s, s, 3), np.uint8), "state": np.zeros(int(self.base_config.state_dim), np.float32)}
        for seq, op in enumerate(("reset", "observe", "plan"), 1):
            self._request(session, op, {"seq": seq, "instruction": "warm up"}, obs)
        self._close(session)
        _set_rng_state(rng)
        return time.perf_counter() - t0

    # ---- on the policy thread ------------------------------------------------------------------------
    def _close(self, session: _Session) -> None:
        self.sessions.pop(session.id, None)
        if self._current is session:
            self._current = None

    def _enter(self, session: _Session) -> None:
        """Make `session`'s loop state the policy's (saving the previous session's) and its RNG the torch RNG's
        (each request ends by saving it: nothing else that draws from the RNG meanwhile reaches a session)."""
        if session.rng is not None:
            _set_rng_state(session.rng)
        if self._current is session:
            return
        p = self.policy
        if self._current is not None:
            self._current.state = p.loop_state()
        if session.state is None:
            p.set_loop_state(None, session.config)
        else:
            p.set_loop_state(session.state)
            session.state = None
        self._current = session

    def _request(self, session: _Session, op: str, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> bytes:
        t0 = time.perf_counter()
        log.debug("session %d: %s seq %s", session.id, op, header.get("seq"))
        self._enter(session)
        p = self.policy
        out: dict[str, np.ndarray] = {}
        if op == "reset":
            seed = header.get("seed")
            if seed is not None:
                torch.manual_seed(int(seed))
            p.reset()
            session.observed = False
            kind = "ok"
        elif op in ("observe", "plan", "act"):
            obs = self._obs(op, header, arrays)
            if op == "observe":
                p.observe(obs)
                session.observed = True
                kind = "ok"
            elif op == "plan":
                if not session.observed:
                    raise ProtocolError("out of order: plan before any observe of this episode (reset, observe, plan)")
                rtc = self._rtc(header, arrays)
                out["actions"] = np.asarray(p.plan(obs) if rtc is None else p.plan(obs, rtc=rtc), dtype=np.float32)
                kind = "chunk"
            else:
                out["action"] = np.asarray(p.select_action(obs), dtype=np.float32)
                session.observed = True
                kind = "action"
        else:
            raise ProtocolError(f"unknown op {op!r} (hello, reset, observe, plan, act)")
        session.rng = _rng_state()
        return encode({"op": kind, "seq": header.get("seq"), "t": header.get("t"),
                       "server_ms": 1e3 * (time.perf_counter() - t0)}, out)

    @staticmethod
    def _rtc(header: dict[str, Any], arrays: dict[str, np.ndarray]) -> RTCRequest | None:
        """A plan's real-time chunking request, if it carries one (a malformed one is a protocol error)."""
        if "rtc" not in header and "rtc_prefix" not in arrays:
            return None
        if "rtc_prefix" not in arrays or arrays["rtc_prefix"].dtype != np.float32:
            raise ProtocolError("a plan with 'rtc' needs the float32 array 'rtc_prefix' (n, A), and the other way round")
        try:
            return RTCRequest.from_message(header.get("rtc"), arrays["rtc_prefix"])
        except (TypeError, ValueError) as e:
            raise ProtocolError(f"bad rtc request: {e}") from None

    @staticmethod
    def _obs(op: str, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, Any]:
        need = ("state",) if op == "plan" else ("image", "state")
        missing = [k for k in need if k not in arrays]
        if missing or not isinstance(header.get("instruction"), str):
            raise ProtocolError(f"{op} needs arrays {list(need)} and a string instruction (missing "
                                f"{missing or ['instruction']})")
        # copies: the policy may keep them (the message buffer is read-only)
        return {"instruction": header["instruction"], **{k: np.array(arrays[k]) for k in need}}


def _rng_state() -> tuple[torch.Tensor, list[torch.Tensor]]:
    return torch.get_rng_state(), (torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [])


def _set_rng_state(state: tuple[torch.Tensor, list[torch.Tensor]]) -> None:
    torch.set_rng_state(state[0])
    if state[1]:
        torch.cuda.set_rng_state_all(state[1])
