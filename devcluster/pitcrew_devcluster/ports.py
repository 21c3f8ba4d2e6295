"""Loopback ports: pick free ones, and check that fixed ones are free before a component needs them."""

from __future__ import annotations

import contextlib
import errno
import socket

from .errors import DevclusterError

LOOPBACK = "127.0.0.1"


def pick_free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """`count` distinct ports the kernel says are free now.

    All sockets stay open until every port is picked, so the kernel cannot hand out the same port
    twice. Another process may still grab one before our component binds it; that shows up as the
    component exiting early with "address already in use" in its log, which `up` reports.
    """
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # SO_REUSEADDR mirrors what the Go servers do, so TIME_WAIT leftovers do not count as "in use".
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def require_free(port: int, component: str, host: str = LOOPBACK) -> None:
    """Raises a clear error when a port chosen by the user is already taken."""
    if not port_is_free(port, host):
        raise DevclusterError(
            f"port {host}:{port} is already in use (pick another port or leave it unset to get a free one)",
            component=component,
        )


def listening(port: int, host: str = LOOPBACK, timeout: float = 0.2) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False
