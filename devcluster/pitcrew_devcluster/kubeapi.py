"""A small, thread-safe Kubernetes REST client over `requests`, working on plain dicts.

The devcluster (readiness checks, node setup, kwok nodes) and the tests need a handful of verbs and
a watch that survives restarts; plain JSON needs no client models.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests

from . import kubeconfig

log = logging.getLogger(__name__)

Obj = dict[str, Any]

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"


class ApiError(Exception):
    def __init__(self, status: int, body: str, method: str, path: str) -> None:
        self.status = status
        self.body = body
        try:
            self.reason = json.loads(body).get("reason", "")
            message = json.loads(body).get("message", body)
        except ValueError:
            self.reason = ""
            message = body
        super().__init__(f"{method} {path}: {status} {message}")


class WatchExpired(Exception):
    """The resourceVersion is too old (410 Gone): the caller must list again."""


class KubeClient:
    def __init__(self, server: str, token: str, ca_pem: bytes | None) -> None:
        self.server = server.rstrip("/")
        self._token = token
        self._verify: str | bool = True
        if ca_pem is not None:
            # requests wants a file; keep it for the client's lifetime.
            self._ca_file = tempfile.NamedTemporaryFile(prefix="pitcrew-ca-", suffix=".crt")  # noqa: SIM115
            self._ca_file.write(ca_pem)
            self._ca_file.flush()
            self._verify = self._ca_file.name
        self._local = threading.local()

    @classmethod
    def from_kubeconfig(cls, path: Path) -> KubeClient:
        ep = kubeconfig.read(path)
        return cls(ep.server, ep.token, ep.ca_pem)

    def _session(self) -> requests.Session:
        # One session per thread: connection pools are not meant to be shared across threads.
        s: requests.Session | None = getattr(self._local, "session", None)
        if s is None:
            s = requests.Session()
            s.headers["Authorization"] = f"Bearer {self._token}"
            s.headers["Accept"] = "application/json"
            s.verify = self._verify
            # Ignore REQUESTS_CA_BUNDLE & co (they would override our CA) and proxies (loopback only).
            s.trust_env = False
            self._local.session = s
        return s

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float = 30,
    ) -> Obj:
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if body is not None else {}
        r = self._session().request(
            method, self.server + path, params=params, data=data, headers=headers, timeout=timeout
        )
        if r.status_code >= 400:
            raise ApiError(r.status_code, r.text, method, path)
        if not r.content:
            return {}
        result: Obj = r.json()
        return result

    def get(self, path: str, **params: Any) -> Obj:
        return self.request("GET", path, params=params or None)

    def get_or_none(self, path: str) -> Obj | None:
        try:
            return self.get(path)
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    def create(self, path: str, body: Obj) -> Obj:
        return self.request("POST", path, body=body)

    def replace(self, path: str, body: Obj) -> Obj:
        return self.request("PUT", path, body=body)

    def patch(self, path: str, body: Obj, content_type: str = MERGE_PATCH) -> Obj:
        return self.request("PATCH", path, body=body, content_type=content_type)

    def delete(self, path: str, body: Obj | None = None) -> Obj:
        return self.request("DELETE", path, body=body)

    def watch(
        self, path: str, resource_version: str, *, timeout_seconds: int = 300, **params: Any
    ) -> Iterator[Obj]:
        """Yields watch events from `resource_version` until the server closes the stream.

        Raises WatchExpired on 410 Gone (as HTTP status or as an ERROR event) so the caller relists.
        """
        query = {
            **params,
            "watch": "true",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_seconds),
        }
        with self._session().get(
            self.server + path, params=query, stream=True, timeout=(10, timeout_seconds + 30)
        ) as r:
            if r.status_code == 410:
                raise WatchExpired(path)
            if r.status_code >= 400:
                raise ApiError(r.status_code, r.text, "WATCH", path)
            for line in r.iter_lines():
                if not line:
                    continue
                event: Obj = json.loads(line)
                if event.get("type") == "ERROR":
                    status = event.get("object", {})
                    if status.get("code") == 410:
                        raise WatchExpired(path)
                    raise ApiError(int(status.get("code", 500)), json.dumps(status), "WATCH", path)
                yield event
