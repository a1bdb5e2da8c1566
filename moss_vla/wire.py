"""The wire format of the rig's network services (the policy server, moss_vla/serve.py, and the arm server,
robot/arm_server.py): one binary websocket message = a small JSON header + raw array bytes. Never pickle.

    message = uint32 little-endian header length | header (UTF-8 JSON object) | array bytes, concatenated

The header holds the message's fields (`op`, `seq`, times, strings, numbers) and, under `arrays`, one
`[name, dtype, shape]` per array, in the order their bytes follow. Decoding checks everything before it
builds an array: the header is a JSON object under `MAX_HEADER` bytes, each dtype is one of `DTYPES`, each
shape is a short list of non-negative ints, and the byte counts add up exactly. Arrays are returned as
read-only views of the message (no copy); take a copy to keep or change one.

Both services also share the loopback rule (`check_bind`): they listen on a loopback address unless the
user sets an explicit switch and a token; across machines use an SSH tunnel or a TLS proxy (`wss`),
docs/rig.md section 4.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import socket
import struct
import threading
from typing import Any

import numpy as np

MAX_HEADER = 16 * 1024  # bytes of JSON: names, numbers, short strings (an instruction)
MAX_DIMS = 4
DTYPES = ("uint8", "float32", "float64", "int64", "bool")
_LEN = struct.Struct("<I")


class WireError(ValueError):
    """A message that is not well formed (the peer gets an error reply naming what is wrong)."""


class ProtocolError(ValueError):
    """A request that breaks the protocol (order, missing arrays, settings, unknown op)."""


def encode(header: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> bytes:
    """One message from `header` (JSON-able fields) and named arrays (sent with their dtype and shape)."""
    arrays = arrays or {}
    specs, blobs = [], []
    for name, value in arrays.items():
        a = np.ascontiguousarray(value)
        if a.dtype.name not in DTYPES:
            raise WireError(f"array {name!r}: dtype {a.dtype.name} is not sent (one of {', '.join(DTYPES)})")
        specs.append([name, a.dtype.name, list(a.shape)])
        blobs.append(a.tobytes())
    head = json.dumps({**header, "arrays": specs}, separators=(",", ":"), allow_nan=False).encode()
    if len(head) > MAX_HEADER:
        raise WireError(f"message header of {len(head)} bytes is over {MAX_HEADER}")
    return b"".join([_LEN.pack(len(head)), head, *blobs])


def decode(data: bytes | str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(header, arrays) of a message; WireError says what is malformed."""
    if isinstance(data, str):
        raise WireError("text message: this service speaks binary messages (moss_vla/wire.py)")
    if len(data) < _LEN.size:
        raise WireError(f"message of {len(data)} bytes is shorter than its length prefix")
    (n,) = _LEN.unpack_from(data)
    if n > MAX_HEADER or _LEN.size + n > len(data):
        raise WireError(f"bad header length {n} (message of {len(data)} bytes, header limit {MAX_HEADER})")
    try:
        header = json.loads(bytes(data[_LEN.size:_LEN.size + n]))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WireError(f"header is not JSON: {e}") from None
    if not isinstance(header, dict) or not isinstance(header.get("op"), str):
        raise WireError("header must be a JSON object with a string 'op'")
    specs = header.pop("arrays", [])
    if not isinstance(specs, list):
        raise WireError("header 'arrays' must be a list of [name, dtype, shape]")
    arrays: dict[str, np.ndarray] = {}
    offset = _LEN.size + n
    view = memoryview(data)
    for spec in specs:
        if not (isinstance(spec, list) and len(spec) == 3 and isinstance(spec[0], str) and spec[1] in DTYPES
                and isinstance(spec[2], list) and len(spec[2]) <= MAX_DIMS
                and all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**31 for d in spec[2])):
            raise WireError(f"bad array spec {str(spec)[:80]} (want [name, dtype in {list(DTYPES)}, shape])")
        name, dtype, shape = spec
        size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if offset + size > len(data):
            raise WireError(f"array {name!r} {dtype}{tuple(shape)} needs {size} bytes, the message has "
                            f"{len(data) - offset} left")
        arrays[name] = np.frombuffer(view[offset:offset + size], dtype=dtype).reshape(shape)
        offset += size
    if offset != len(data):
        raise WireError(f"{len(data) - offset} bytes after the last array")
    return header, arrays


def parse_address(address: str, what: str) -> tuple[str, int]:
    """`host:port` -> (host, port); otherwise a clear error naming the config key `what` (e.g. planner.remote)."""
    host, sep, port = str(address).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{what}={address!r}: expected <host>:<port>, e.g. 127.0.0.1:8765 (through an SSH tunnel "
                         f"for another machine, docs/rig.md section 4)")
    return host.strip("[]"), int(port)


def peer_name(ws: Any) -> str:
    """host:port of a connection's peer, for log lines."""
    return "{}:{}".format(*ws.remote_address[:2]) if ws.remote_address else "?"


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or address) resolves only to loopback addresses."""
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def check_bind(host: str, allow_remote: bool, token: str | None, what: str) -> None:
    """Refuse to listen beyond loopback unless asked explicitly and protected by a token."""
    if is_loopback(host):
        return
    if not allow_remote:
        raise ValueError(f"{what}: host={host} is not a loopback address; listening on the network needs "
                         f"allow_remote=true and a token (better: keep host=127.0.0.1 and reach it through an "
                         f"SSH tunnel or a TLS proxy, docs/rig.md section 4)")
    if not token:
        raise ValueError(f"{what}: host={host} with allow_remote=true needs a token (token=... or the "
                         f"environment variable the config names); clients send it in their hello")


def token_ok(expected: str | None, given: Any) -> bool:
    """Constant-time token check; no token configured accepts any hello."""
    if not expected:
        return True
    return isinstance(given, str) and hmac.compare_digest(expected.encode(), given.encode())


class Service:
    """What the policy and arm servers share: `serve()` (a coroutine, until `stop()`), run in the foreground by
    their commands or on a background thread by `start()` (tests, benchmarks); `address` is host:port.

    One connection (`_handle`): every message gets one reply. The first must be a hello with the service's
    token: a wrong token gets an error (kind "auth") and the connection is closed (code 1008); otherwise
    `_hello` opens the connection's state (a session, the arm's client) and later messages go to `_message`.
    Any exception becomes an error reply (`_error_reply`) and one log line, with the traceback unless it is
    one of `expected_errors` (a malformed or refused request); the connection stays open. `_closed` runs
    when the connection ends, however it ends."""

    host: str
    port: int
    token: str | None
    errors: int
    log: logging.Logger
    expected_errors: tuple[type[BaseException], ...] = (WireError,)

    def _init_service(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self._thread: threading.Thread | None = None
        self.errors = 0

    async def serve(self) -> None:
        raise NotImplementedError

    # ---- one connection (the subclass's hooks) ---------------------------------------------------------
    def _decode(self, message: bytes | str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return decode(message)

    def _heard(self, conn: Any) -> None:
        """A message arrived on a connection past its hello (before it is decoded)."""

    async def _hello(self, ws: Any, peer: str, header: dict[str, Any]) -> tuple[Any, bytes]:
        """(the connection's state, the hello reply) for a hello with the right token; raise to refuse it."""
        raise NotImplementedError

    async def _message(self, conn: Any, op: str, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> bytes:
        raise NotImplementedError

    def _error_reply(self, conn: Any, seq: int | None, e: Exception) -> bytes:
        return encode({"op": "error", "seq": seq, "message": str(e)[:2000]})

    async def _closed(self, ws: Any, peer: str, conn: Any) -> None:
        """The connection ended (`conn`: what `_hello` returned, None without a hello)."""

    def _conn_name(self, conn: Any, peer: str) -> str:
        return f"client {peer}"

    async def _handle(self, ws: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        peer = peer_name(ws)
        conn: Any = None
        try:
            async for message in ws:
                seq = None
                try:
                    if conn is not None:
                        self._heard(conn)
                    header, arrays = self._decode(message)
                    seq, op = header.get("seq"), header["op"]
                    seq = seq if isinstance(seq, int) and not isinstance(seq, bool) else None
                    if conn is None:
                        if op != "hello":
                            raise ProtocolError(f"{op!r} before hello: the first message must be a hello")
                        if not token_ok(self.token, header.get("token")):
                            self._log_error(peer, None, "hello with a wrong or missing token")
                            await ws.send(encode({"op": "error", "seq": seq, "kind": "auth", "recoverable": False,
                                                  "message": "wrong or missing token"}))
                            await ws.close(1008, "wrong token")
                            return
                        conn, reply = await self._hello(ws, peer, header)
                    else:
                        reply = await self._message(conn, op, header, arrays)
                except Exception as e:  # noqa: BLE001 - any failure is the peer's to hear; the service goes on
                    self._log_error(peer, conn, f"{type(e).__name__}: {e}",
                                    None if isinstance(e, self.expected_errors) else e)
                    reply = self._error_reply(conn, seq, e)
                await ws.send(reply)
        except ConnectionClosed as e:
            self.log.info("%s: connection closed (%s)", self._conn_name(conn, peer), e)
        finally:
            await self._closed(ws, peer, conn)

    def _log_error(self, peer: str, conn: Any, text: str, exc: BaseException | None = None) -> None:
        self.errors += 1
        self.log.warning("%s: error reply: %s", self._conn_name(conn, peer), text[:300], exc_info=exc)

    # ---- running ---------------------------------------------------------------------------------------
    def _listening(self, server: object) -> None:
        """Called by `serve()` once it listens: takes the port (port 0 picks a free one) and wakes `start()`."""
        self.port = server.sockets[0].getsockname()[1]
        self._loop = asyncio.get_running_loop()
        self._ready.set()

    def _run(self) -> None:
        try:
            asyncio.run(self.serve())
        except BaseException as e:  # handed to start() (before listening) or logged (after)
            if self._ready.is_set():
                self.log.error("%s failed", type(self).__name__, exc_info=e)
            self._failed = e
            self._ready.set()

    def start(self, timeout: float = 10.0) -> Service:
        """Serve on a background thread; returns once listening, or raises what stopped `serve()` before
        (e.g. the OSError of a port in use)."""
        self._thread = threading.Thread(target=self._run, name=type(self).__name__, daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"{type(self).__name__} did not start listening within {timeout} s")
        if self._failed is not None:
            raise self._failed
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop_event is not None:
            self._loop.call_soon_threadsafe(self._stop_event.set)
        if self._thread is not None:
            self._thread.join(10)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"
