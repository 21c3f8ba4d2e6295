"""The API permissions the operator uses, each with the call that needs it.

The Helm ClusterRole must grant exactly these (tests/controller/test_rbac.py), and the integration
tests run the operator under a token bound to that ClusterRole, so a missing verb fails a test and
an unused one is flagged here.
"""

from __future__ import annotations

from typing import NamedTuple


class Permission(NamedTuple):
    group: str
    resource: str
    verbs: tuple[str, ...]
    why: str


PERMISSIONS: tuple[Permission, ...] = (
    Permission("pitcrew.dev", "enginebuilds", ("get", "list", "watch", "patch"),
               "kopf watches EngineBuilds and patches its annotations and finalizer; sync GETs the "
               "current object; deletion LISTs others sharing an engine"),
    Permission("pitcrew.dev", "enginebuilds/status", ("patch",), "status (merge patch)"),
    Permission("batch", "jobs", ("create", "list", "watch", "get", "delete"),
               "create builder Jobs; watch ours (label selector); find them per EngineBuild; "
               "GET a vanished Job; delete superseded or stopped Jobs"),
    Permission("", "pods", ("list", "watch"), "watch our builder Pods (label selector) for their state"),
    Permission("", "secrets", ("get",), "check referenced S3 Secrets exist; read output credentials"),
    Permission("", "persistentvolumeclaims", ("get",),
               "pvc:// sources: the claim's uid is part of the cache key"),
    Permission("", "events", ("create",),
               "Kubernetes Events on each transition (pitcrew.events; kopf for handler failures)"),
    Permission("apiextensions.k8s.io", "customresourcedefinitions", ("list", "watch"),
               "kopf's resource scanning notices the CRD being (re)installed"),
    Permission("", "namespaces", ("list", "watch"), "kopf resolves PITCREW_NAMESPACES patterns"),
)  # fmt: skip
