"""The policy server (`moss-serve`, rig/serve_cli.py): a policy on one machine (the GPU box), the 10 Hz loop
on another, talking websockets with raw numpy payloads (moss_vla/wire.py; never pickle).

One connection = one session = one rig. A session keeps its own streaming state of the policy (frame
window, per-frame cache, queued actions, ACT ensembler, its inference settings and its torch RNG), so two
rigs served at once never see each other's frames; the weights are shared and every policy call runs on
one worker thread, so sessions take turns on the device. The protocol is what `ChunkPlanner`
(robot/chunk_planner.py) asks of a policy, one request and one reply each:

    hello   {token, settings}                      -> hello {session, config, max_message}   (first message)
    reset   {seq, seed}                            -> ok       new episode; `seed` seeds the session's RNG
    observe {seq, t, instruction} image, state     -> ok       the step's frame into the window
    plan    {seq, t, instruction} state            -> chunk    actions (H, A) float32 of the window so far
    act     {seq, t, instruction} image, state     -> action   select_action (observe + the policy's own replanning)
    any error                                      -> error {seq, message}   (and one log line)

Requests carry `seq` (1, 2, 3, ... per session) and the client's send time `t`, echoed in the reply with the
server's compute time, so the client measures the round trip. A message that is malformed, over the size
limit (`max_message`: an 8-frame window of the policy's images plus headroom; beyond 4x that the transport
closes the connection, websocket code 1009), out of order (a `seq` that is not the next one, a plan before
any observe of the episode, a request before hello) or refused by the policy gets an error reply; the
session stays usable and no other session notices. A wrong token gets an error and the connection is
closed (code 1008).
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

from moss_vla.wire import Service, WireError, check_bind, decode, encode, token_ok

log = logging.getLogger("moss_vla.serve")

# the inference choices a client may set for its own session (as moss-sim eval / moss-trial set them locally)
SETTINGS = {"n_action_steps": int, "inference_seed": int, "use_cache": bool, "temporal_ensemble_coeff": float}
# MossVLAPolicy's per-episode loop state (modeling.py `_init_loop_state`), swapped per session
LOOP_STATE = ("config", "cache", "_raw_frames", "_actions", "_ensembler", "_text_cache")
HEADROOM = 64 * 1024  # bytes over the image window for headers, state and instruction
TRANSPORT_FACTOR = 4  # messages over max_message * this are cut by the transport (close code 1009)


class ProtocolError(ValueError):
    """A request that breaks the protocol (order, missing arrays, settings)."""


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
    """Serves `policy` (reset / observe / plan / select_action and a MossVLAConfig `config`) to rigs.

    `host`/`port`: where to listen (port 0: any free port, see `.port`); beyond loopback only with
    `allow_remote` and a `token` (moss_vla/wire.py `check_bind`); `label`: what the server says it serves."""

    def __init__(self, policy: Any, host: str = "127.0.0.1", port: int = 8765, token: str | None = None,
                 allow_remote: bool = False, label: str = "") -> None:
        check_bind(host, allow_remote, token, "moss-serve")
        self.policy, self.host, self.port, self.token, self.label = policy, host, int(port), token, label
        self.base_config = policy.config
        self.max_message = window_bytes(self.base_config)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="policy")  # sessions take turns on the device
        self._current: _Session | None = None
        self._ids = itertools.count(1)
        self.sessions: dict[int, _Session] = {}
        self.errors = 0
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

    # ---- one connection ------------------------------------------------------------------------------
    async def _handle(self, ws: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        peer = "{}:{}".format(*ws.remote_address[:2]) if ws.remote_address else "?"
        session: _Session | None = None
        try:
            async for message in ws:
                seq = None
                try:
                    if len(message) > self.max_message:
                        raise WireError(f"message of {len(message)} bytes is over the limit of {self.max_message} "
                                        f"(an {self.base_config.n_frames}-frame window of "
                                        f"{self.base_config.input_image_size} px images)")
                    header, arrays = decode(message)
                    seq, op = header.get("seq"), header["op"]
                    if session is None:
                        if op != "hello":
                            raise ProtocolError(f"{op!r} before hello: the first message must be a hello")
                        if not token_ok(self.token, header.get("token")):
                            self._error_log(peer, None, "hello with a wrong or missing token")
                            await ws.send(encode({"op": "error", "seq": seq, "message": "wrong or missing token"}))
                            await ws.close(1008, "wrong token")
                            return
                        session = self._open(peer, header.get("settings") or {})
                        reply = encode({"op": "hello", "session": session.id, "label": self.label,
                                        "config": config_summary(session.config), "max_message": self.max_message})
                    else:
                        if seq != session.seq + 1:
                            raise ProtocolError(f"out of order: seq {seq!r} after {session.seq} (want {session.seq + 1})")
                        reply = await asyncio.get_running_loop().run_in_executor(
                            self._pool, self._request, session, op, header, arrays)
                        session.seq = seq
                except (WireError, ProtocolError, ValueError, TypeError, RuntimeError) as e:
                    reply = self._error_reply(peer, session, seq, e)
                await ws.send(reply)
        except ConnectionClosed as e:
            log.info("session %s (%s) closed: %s", session.id if session else "-", peer, e)
        finally:
            if session is not None:
                self._pool.submit(self._close, session)

    def _error_reply(self, peer: str, session: _Session | None, seq: Any, e: Exception) -> bytes:
        kind = "" if isinstance(e, (WireError, ProtocolError)) else f"{type(e).__name__}: "
        self._error_log(peer, session, f"{kind}{e}")
        return encode({"op": "error", "seq": seq if isinstance(seq, int) else None, "message": f"{kind}{e}"[:2000]})

    def _error_log(self, peer: str, session: _Session | None, text: str) -> None:
        self.errors += 1
        log.warning("session %s (%s): error reply: %s", session.id if session else "-", peer, text[:300])

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
            self._current.state = {k: getattr(p, k) for k in LOOP_STATE}
        if session.state is None:
            p.config = session.config
            p._init_loop_state()
        else:
            for k, v in session.state.items():
                setattr(p, k, v)
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
                out["actions"] = np.asarray(p.plan(obs), dtype=np.float32)
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
