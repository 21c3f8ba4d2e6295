"""ConfigMap, Secret and service-account token lookups against the API server."""

from __future__ import annotations

from ..kubeapi import ApiError, KubeClient, Obj
from .podspec import ConfigMissing


class ApiLookup:
    def __init__(self, client: KubeClient) -> None:
        self.client = client

    def configmap(self, namespace: str, name: str) -> Obj | None:
        return self.client.get_or_none(f"/api/v1/namespaces/{namespace}/configmaps/{name}")

    def secret(self, namespace: str, name: str) -> Obj | None:
        return self.client.get_or_none(f"/api/v1/namespaces/{namespace}/secrets/{name}")

    def service_account_token(
        self, namespace: str, service_account: str, audience: str | None, expiration_seconds: int
    ) -> str:
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"audiences": [audience] if audience else [], "expirationSeconds": expiration_seconds},
        }
        try:
            out = self.client.create(
                f"/api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token", body
            )
        except ApiError as e:
            if e.status == 404:
                raise ConfigMissing(f'serviceaccount "{service_account}" not found') from e
            raise
        return str(out["status"]["token"])
