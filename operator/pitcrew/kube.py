"""A small async Kubernetes client: aiohttp over the credentials kopf logged in with.

Only what the controller needs (get, list, create, merge-patch, delete). Transient failures (429,
5xx, connection errors) are retried with backoff; 404 on get/delete is a value, not an error; 409 on
create raises Conflict so callers can adopt the existing object (deterministic names).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp

log = logging.getLogger("pitcrew.kube")

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
ATTEMPTS = 5


class ApiError(Exception):
    def __init__(self, status: int, message: str, body: Any = None) -> None:
        self.status = status
        self.body = body
        super().__init__(f"HTTP {status}: {message}")


class Conflict(ApiError):
    pass


class NotFound(ApiError):
    pass


def _materialize(data: str | bytes, suffix: str) -> str:
    """aiohttp/ssl want files for client certs; kopf may hand us the bytes."""
    raw = data.encode() if isinstance(data, str) else data
    if not raw.lstrip().startswith(b"-----"):
        raw = base64.b64decode(raw)
    f = tempfile.NamedTemporaryFile(prefix="pitcrew-", suffix=suffix, delete=False)  # noqa: SIM115
    f.write(raw)
    f.close()
    Path(f.name).chmod(0o600)
    return f.name


def ssl_context(info: Any) -> ssl.SSLContext | bool:
    if info.insecure:
        return False
    ctx = ssl.create_default_context()
    if info.ca_path:
        ctx.load_verify_locations(cafile=str(info.ca_path))
    elif info.ca_data:
        raw = info.ca_data.encode() if isinstance(info.ca_data, str) else info.ca_data
        if not raw.lstrip().startswith(b"-----"):
            raw = base64.b64decode(raw)
        ctx.load_verify_locations(cadata=raw.decode())
    cert = info.certificate_path or (info.certificate_data and _materialize(info.certificate_data, ".crt"))
    key = info.private_key_path or (info.private_key_data and _materialize(info.private_key_data, ".key"))
    if cert:
        ctx.load_cert_chain(certfile=str(cert), keyfile=str(key) if key else None)
    return ctx


class Kube:
    """Created empty at import; `configure()` is called from the login handler with kopf's ConnectionInfo."""

    def __init__(self) -> None:
        self._server: str | None = None
        self._headers: dict[str, str] = {}
        self._ssl: ssl.SSLContext | bool = True
        self._session: aiohttp.ClientSession | None = None
        self.writes = 0  # write requests sent (for the write-economy benchmark)

    def configure(self, info: Any) -> None:
        self._server = info.server.rstrip("/")
        self._headers = {"Accept": "application/json"}
        if info.token:
            self._headers["Authorization"] = f"{info.scheme or 'Bearer'} {info.token}"
        elif info.username and info.password:
            basic = base64.b64encode(f"{info.username}:{info.password}".encode()).decode()
            self._headers["Authorization"] = f"Basic {basic}"
        self._ssl = ssl_context(info)
        if self._session is not None and not self._session.closed:
            # Credentials changed: new connections (the old session closes in the background).
            old, self._session = self._session, None
            asyncio.get_event_loop().create_task(old.close())

    @property
    def configured(self) -> bool:
        return self._server is not None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _sess(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=20),
                timeout=aiohttp.ClientTimeout(total=30, connect=10),
            )
        return self._session

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        if self._server is None:
            raise RuntimeError("Kubernetes client used before login")
        url = self._server + path
        headers = dict(self._headers)
        if body is not None:
            headers["Content-Type"] = content_type
        if method != "GET":
            self.writes += 1
        delay = 0.2
        for attempt in range(1, ATTEMPTS + 1):
            try:
                async with self._sess().request(
                    method, url, json=body, params=params, headers=headers
                ) as resp:
                    if resp.status < 300:
                        return await resp.json(content_type=None)
                    data = (
                        await resp.json(content_type=None)
                        if resp.content_type == "application/json"
                        else None
                    )
                    message = (data or {}).get("message") if isinstance(data, dict) else await resp.text()
                    if resp.status == 404:
                        raise NotFound(404, message or path, data)
                    if resp.status == 409:
                        raise Conflict(409, message or path, data)
                    if resp.status in RETRY_STATUSES and attempt < ATTEMPTS:
                        log.warning("retrying %s %s after HTTP %s", method, path, resp.status)
                    else:
                        raise ApiError(resp.status, message or path, data)
            except (TimeoutError, aiohttp.ClientConnectionError) as e:
                if attempt == ATTEMPTS:
                    raise ApiError(0, f"{method} {path}: {e!r}") from e
                log.warning("retrying %s %s after %r", method, path, e)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
        raise AssertionError("unreachable")

    async def get(self, path: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = await self.request("GET", path)
            return result
        except NotFound:
            return None

    async def list(self, path: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        params = {"labelSelector": label_selector} if label_selector else None
        result = await self.request("GET", path, params=params)
        items: list[dict[str, Any]] = result.get("items") or []
        return items

    async def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("POST", path, body=body)
        return result

    async def merge_patch(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        # Merge patches carry no resourceVersion, so they never conflict (409) with other writers.
        result: dict[str, Any] = await self.request(
            "PATCH", path, body=body, content_type="application/merge-patch+json"
        )
        return result

    async def delete(self, path: str, propagation: str = "Background") -> bool:
        """True when something was deleted, False when it was already gone."""
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": propagation}
        try:
            await self.request("DELETE", path, body=body)
            return True
        except NotFound:
            return False


def ns_path(
    namespace: str, plural: str, name: str | None = None, *, group: str = "", version: str = "v1"
) -> str:
    base = f"/api/{version}" if not group else f"/apis/{group}/{version}"
    path = f"{base}/namespaces/{namespace}/{plural}"
    return f"{path}/{name}" if name else path
