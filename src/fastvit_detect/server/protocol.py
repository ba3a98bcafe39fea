"""The connection layer: uvicorn's h11 protocol with header and body deadlines, and the listening socket."""

from __future__ import annotations

import asyncio
import logging
import socket

from uvicorn.protocols.http.h11_impl import H11Protocol

from ..errors import (
    FastVitDetectError,
)

log = logging.getLogger("fastvit_detect.server")


class TimedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, plus a deadline for a request's headers.

    uvicorn times out idle kept-alive connections but not a client that trickles its headers a byte at a time:
    each such connection would stay open forever. Here the headers of every request must be complete within the
    deadline of the request's first byte, or the connection is closed.
    """

    header_timeout_s = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_deadline: asyncio.TimerHandle | None = None
        self._arm_header_deadline()

    def _arm_header_deadline(self) -> None:
        if getattr(self, "_header_deadline", None) is None:
            self._header_deadline = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _disarm_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if self._awaiting_headers():
            log.info("closing a connection whose request headers took over %g s", self.header_timeout_s)
            self.transport.close()

    def _awaiting_headers(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def data_received(self, data: bytes) -> None:
        if self._awaiting_headers():
            self._arm_header_deadline()
        super().data_received(data)
        if not self._awaiting_headers():
            self._disarm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket, or a FastVitDetectError saying why not: a bad host or a port in use are an operator's
    mistake, to be told plainly before the server starts."""
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ValueError(f"port must be 0-65535, got {port!r}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise FastVitDetectError(f"--host {host!r}: not an address this machine can listen on ({exc})") from exc
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise FastVitDetectError(f"can't listen on {host}:{port}: {exc.strerror or exc}") from exc
    sock.set_inheritable(True)
    return sock
