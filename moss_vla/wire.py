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
    their commands or on a background thread by `start()` (tests, benchmarks); `address` is host:port."""

    host: str
    port: int

    def _init_service(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None

    async def serve(self) -> None:
        raise NotImplementedError

    def _listening(self, server: object) -> None:
        """Called by `serve()` once it listens: takes the port (port 0 picks a free one) and wakes `start()`."""
        self.port = server.sockets[0].getsockname()[1]
        self._loop = asyncio.get_running_loop()
        self._ready.set()

    def start(self, timeout: float = 10.0) -> Service:
        self._thread = threading.Thread(target=asyncio.run, args=(self.serve(),), name=type(self).__name__,
                                        daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"{type(self).__name__} did not start listening")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop_event is not None:
            self._loop.call_soon_threadsafe(self._stop_event.set)
        if self._thread is not None:
            self._thread.join(10)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"
