"""Serves `/containerLogs/<ns>/<pod>/<container>` over HTTPS so `kubectl logs` works.

The API server proxies `kubectl logs` to the node's kubeletEndpoint port; it does not verify the
node's certificate unless told to (no --kubelet-certificate-authority), and only loopback can
reach this server. Supported query parameters: follow, tailLines, limitBytes.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

from .config import LocalNodeConfig

log = logging.getLogger(__name__)


def find_log(work_dir: Path, namespace: str, pod: str, container: str) -> Path | None:
    """The newest pod directory of that name (a re-created pod gets a new uid suffix)."""
    dirs = sorted(work_dir.glob(f"{namespace}_{pod}_*"), key=lambda p: p.stat().st_mtime, reverse=True)
    for d in dirs:
        path = d / "containers" / container / "output.log"
        if path.exists():
            return path
    return None


def tail_bytes(data: bytes, lines: int) -> bytes:
    if lines <= 0:
        return b""
    parts = data.splitlines(keepends=True)
    return b"".join(parts[-lines:])


class _Handler(BaseHTTPRequestHandler):
    work_dir: Path

    def log_message(self, format: str, *args: object) -> None:  # quiet: one line per request at debug
        log.debug("logserver: " + format, *args)

    def do_GET(self) -> None:
        url = urlparse(self.path)
        parts = [unquote(p) for p in url.path.split("/") if p]
        if len(parts) != 4 or parts[0] != "containerLogs":
            self.send_error(404, "only /containerLogs/<namespace>/<pod>/<container> is served")
            return
        _, ns, pod, container = parts
        query = parse_qs(url.query)
        path = find_log(self.work_dir, ns, pod, container)
        if path is None:
            self.send_error(404, f"no log for container {container} of pod {ns}/{pod} on this node")
            return
        follow = query.get("follow", ["false"])[0] == "true"
        data = path.read_bytes()
        if "tailLines" in query:
            data = tail_bytes(data, int(query["tailLines"][0]))
        if "limitBytes" in query:
            data = data[: int(query["limitBytes"][0])]
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.end_headers()
        try:
            self.wfile.write(data)
            self.wfile.flush()
            if follow:
                self._follow(path, path.stat().st_size)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _follow(self, path: Path, offset: int) -> None:
        pidfile = path.parent / "pid"
        with path.open("rb") as f:
            f.seek(offset)
            while True:
                chunk = f.read(64 * 1024)
                if chunk:
                    self.wfile.write(chunk)
                    self.wfile.flush()
                    continue
                if not pidfile.exists():  # the container has exited and everything is sent
                    return
                time.sleep(0.2)


def serve(cfg: LocalNodeConfig) -> ThreadingHTTPServer | None:
    """Starts the server in a daemon thread (None when the config names no port)."""
    if not cfg.log_port:
        return None
    handler = type("Handler", (_Handler,), {"work_dir": cfg.work_dir})
    server = ThreadingHTTPServer(("127.0.0.1", cfg.log_port), handler)
    server.daemon_threads = True
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, name="logserver", daemon=True).start()
    log.info("serving container logs", extra={"port": cfg.log_port})
    return server
