"""A policy served by `moss-serve` (moss_vla/serve.py), with the interface of a local one: `reset`, `observe`,
`plan` (what the chunk planners of robot/chunk_planner.py ask) and `select_action` (a sync controller), plus
`config` (the server's: n_action_steps, action_dim, ...). `planner.remote=<host>:<port>` builds one.

Every call is one request and one reply on a websocket; the round trip is measured with the request's send
time. A call that gets no reply within `timeout` seconds, or whose connection is lost, raises
`RemotePolicyError` (the chunk planner turns it into a `PlannerError`: the trial ends with the arm stopped,
like any planner failure) and marks the connection broken, and so does an error reply of kind "protocol"
(the request broke the protocol: the session's stream is not what this side thinks); the next `reset()` (the
next episode) reconnects and opens a new session on the server, so an episode never continues on a half-known
stream. An error of kind "policy" (the policy refused the request) raises too, but the session goes on.

Determinism: `reset()` sends this process's torch seed (`torch.initial_seed()`, which moss-sim eval and
moss-trial set per episode) and the server seeds the session's own RNG with it, so the flow-matching
noise is drawn as it would be in-process: the same seeds give the same actions.
"""

from __future__ import annotations

import contextlib
import time
from types import SimpleNamespace
from typing import Any

import numpy as np

from moss_vla.rtc import RTCRequest
from moss_vla.wire import WireError, decode, encode, parse_address


class RemotePolicyError(RuntimeError):
    """The policy server failed, refused a request, timed out or went away."""


class RemotePolicy:
    """A `moss-serve` session. `settings`: inference choices for this session (n_action_steps, inference_seed,
    use_cache, temporal_ensemble_coeff; None keeps the server's); `token`: the server's, if it has one;
    `timeout`: seconds to wait for a reply (planner.remote_timeout); `scheme`: ws, or wss through a TLS proxy."""

    def __init__(self, address: str, *, timeout: float, token: str | None = None,
                 settings: dict[str, Any] | None = None, connect_timeout: float = 5.0, scheme: str = "ws") -> None:
        self.host, self.port = parse_address(address, "planner.remote")
        self.address = f"{self.host}:{self.port}"
        self.token, self.timeout, self.connect_timeout, self.scheme = token, float(timeout), float(connect_timeout), scheme
        self.settings = {k: v for k, v in (settings or {}).items() if v is not None}
        self._ws: Any = None
        self._seq = 0
        self.session: int | None = None
        self._connected_before = False  # the first connection is not a reconnect
        self._clear_stats()
        self._connect()

    # ---- connection ----------------------------------------------------------------------------------
    def _connect(self) -> None:
        from websockets.sync.client import connect

        uri = f"{self.scheme}://{self.host}:{self.port}"
        try:
            # entered by hand: websockets 17 warns about a connection opened outside a `with` block; _broken closes it
            self._ws = connect(uri, open_timeout=self.connect_timeout, close_timeout=1, compression=None,
                               max_size=None).__enter__()  # replies are small; the server limits what it receives
        except Exception as e:
            raise RemotePolicyError(f"cannot reach the policy server at {uri}: {type(e).__name__}: {e} (is moss-serve "
                                    f"running there, and the SSH tunnel up?)") from e
        self._seq = 0
        self.reconnects += self._connected_before
        self._connected_before = True
        try:
            reply, _ = self._call({"op": "hello", "token": self.token, "settings": self.settings}, seq=False)
            if reply["op"] != "hello":
                raise RemotePolicyError(f"policy server at {self.address}: unexpected hello reply {reply['op']!r}")
        except BaseException:
            self._broken()  # a refused hello leaves no open socket behind
            raise
        self.session, self.max_message = reply["session"], int(reply["max_message"])
        self.label = reply.get("label", "")
        self.config = SimpleNamespace(**reply["config"])
        self.supports_rtc = bool(reply.get("rtc", False))  # the served policy takes plan(obs, rtc=...)

    def _broken(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            with contextlib.suppress(Exception):  # it is being dropped anyway
                ws.close()

    def _call(self, header: dict[str, Any], arrays: dict[str, np.ndarray] | None = None,
              seq: bool = True) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        if self._ws is None:
            raise RemotePolicyError(f"the connection to the policy server at {self.address} was lost earlier in this "
                                    f"episode; the next episode reconnects")
        t0 = time.perf_counter()
        if seq:
            header = {**header, "seq": self._seq + 1}
        message = encode({**header, "t": t0}, arrays)  # a message that cannot be encoded uses no number
        if seq:
            self._seq += 1
        try:
            self._ws.send(message)
            data = self._ws.recv(timeout=self.timeout)
        except TimeoutError as e:
            self._broken()
            self.failures += 1
            raise RemotePolicyError(f"policy server at {self.address}: no reply to {header['op']} within "
                                    f"{self.timeout} s") from e
        except Exception as e:
            self._broken()
            self.failures += 1
            raise RemotePolicyError(f"policy server at {self.address}: connection lost during {header['op']} "
                                    f"({type(e).__name__}: {e})") from e
        try:
            reply, out = decode(data)
        except WireError as e:
            self._broken()
            self.failures += 1
            raise RemotePolicyError(f"policy server at {self.address}: malformed reply ({e})") from e
        if reply["op"] == "error":
            self.failures += 1
            if reply.get("kind") != "policy" or (seq and reply.get("seq") != self._seq):
                self._broken()  # the request broke the protocol: the stream is not what this side thinks
            raise RemotePolicyError(f"policy server at {self.address}: {reply.get('message')}")
        if seq and reply.get("seq") != self._seq:
            self._broken()
            self.failures += 1
            raise RemotePolicyError(f"policy server at {self.address}: reply for seq {reply.get('seq')}, expected "
                                    f"{self._seq}")
        self.rtt_ms.append(1e3 * (time.perf_counter() - t0))
        self.server_ms.append(float(reply.get("server_ms") or 0.0))
        return reply, out

    # ---- the policy interface ------------------------------------------------------------------------
    def reset(self) -> None:
        """A new episode: reconnects (a new session) if the connection was lost, then resets the session."""
        import torch

        self._clear_stats()
        if self._ws is None:
            self._connect()
        self._call({"op": "reset", "seed": int(torch.initial_seed())})

    @staticmethod
    def _arrays(obs: dict[str, Any], image: bool) -> dict[str, np.ndarray]:
        out = {"state": np.asarray(obs["state"], dtype=np.float32)}
        if image:
            out["image"] = np.asarray(obs["image"])
        return out

    def observe(self, obs: dict[str, Any]) -> None:
        self._call({"op": "observe", "instruction": str(obs["instruction"])}, self._arrays(obs, True))

    def plan(self, obs: dict[str, Any], rtc: RTCRequest | None = None) -> np.ndarray:
        header, arrays = {"op": "plan", "instruction": str(obs["instruction"])}, self._arrays(obs, False)
        if rtc is not None:  # real-time chunking: the request's numbers and the previous chunk's remainder
            if not self.supports_rtc:
                raise RemotePolicyError(f"planner.rtc.enabled: the policy served at {self.address} takes no real-time "
                                        f"chunking request; set planner.rtc.enabled=false")
            header["rtc"], arrays["rtc_prefix"] = rtc.header(), np.asarray(rtc.prefix, dtype=np.float32)
        _, out = self._call(header, arrays)
        if "actions" not in out:
            raise RemotePolicyError(f"policy server at {self.address}: a chunk reply without actions")
        return np.array(out["actions"], dtype=np.float32)

    def select_action(self, obs: dict[str, Any]) -> np.ndarray:
        _, out = self._call({"op": "act", "instruction": str(obs["instruction"])}, self._arrays(obs, True))
        if "action" not in out:
            raise RemotePolicyError(f"policy server at {self.address}: an action reply without an action")
        return np.array(out["action"], dtype=np.float32)

    def eval(self) -> RemotePolicy:
        return self

    @classmethod
    def from_config(cls, planner: Any, settings: dict[str, Any] | None = None) -> RemotePolicy:
        """From a command's `planner` block: `remote` (host:port), `remote_token`, `remote_timeout`."""
        return cls(str(planner["remote"]), token=planner.get("remote_token") or None, settings=settings,
                   timeout=float(planner["remote_timeout"]))

    # ---- numbers -------------------------------------------------------------------------------------
    def _clear_stats(self) -> None:
        self.rtt_ms: list[float] = []
        self.server_ms: list[float] = []
        self.failures = 0
        self.reconnects = 0  # new sessions opened this episode (the next reset() reconnects after a failure)

    def loop_stats(self) -> dict[str, Any]:
        """This episode's remote numbers (merged into the planner's, robot/chunk_planner.py), all per episode."""
        rtt, srv = np.asarray(self.rtt_ms), np.asarray(self.server_ms)
        pct = (lambda a, q: float(np.percentile(a, q)) if len(a) else float("nan"))
        return {"remote": self.address, "remote_requests": len(rtt), "remote_failures": self.failures,
                "remote_reconnects": self.reconnects, "remote_rtt_ms_p50": pct(rtt, 50),
                "remote_rtt_ms_p99": pct(rtt, 99), "remote_added_ms_p99": pct(rtt - srv, 99) if len(rtt) else float("nan")}

    def close(self) -> None:
        self._broken()
