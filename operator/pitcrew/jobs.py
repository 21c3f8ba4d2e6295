"""Renders the builder Job, which carries the BuildPlan itself. Pure: dicts in, dicts out.

One object per build: the plan travels in the Job's pod template (a few KiB of JSON), so there is
no ConfigMap to create, own, garbage-collect or grant RBAC for.

Least privilege: no service-account token, non-root, no privilege escalation, no capabilities,
RuntimeDefault seccomp; credentials reach the builder only as secretKeyRef env vars.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from pitcrew import sharing
from pitcrew.api.plan import CREDENTIAL_ENV, PLAN_JSON_ENV, BuildPlan
from pitcrew.api.v1alpha1 import API_VERSION, GROUP, KIND, EngineBuildSpec, SecretReference
from pitcrew.settings import Settings
from pitcrew.validation import Resolved

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "pitcrew"
COMPONENT = "app.kubernetes.io/component"
LABEL_UID = "pitcrew.dev/enginebuild-uid"
LABEL_KEY = "pitcrew.dev/cache-key"  # first 32 hex digits: label values are capped at 63
ANN_NAME = "pitcrew.dev/enginebuild"
ANN_KEY = "pitcrew.dev/cache-key"
ANN_GENERATION = "pitcrew.dev/generation"
# sha256 of what the pod asks of the scheduler and the Job controller (scheduling_digest): a spec
# change that keeps the engine but changes these replaces a Job no pod of which runs yet.
ANN_SCHEDULING = "pitcrew.dev/scheduling"
SELECTOR = f"{MANAGED_BY}={MANAGER}"

SCRATCH_DIR = "/scratch"
PVC_ROOT = "/mnt/pvc"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_MAJOR_LABEL = "nvidia.com/gpu.compute.major"  # NVIDIA GPU feature discovery
GPU_MINOR_LABEL = "nvidia.com/gpu.compute.minor"
CONTAINER = "builder"
KEY_IN_NAME = 8
UID_IN_NAME = 6
MAX_NAME = 63


def job_name(eb_name: str, eb_uid: str, key: str, generation: int) -> str:
    """`<name>-<uid[:6]>-<key[:8]>-<generation>`, a DNS label of at most 63 characters.

    Deterministic, so a restarted operator re-creating it gets 409 and adopts the existing Job (after
    checking it is ours); the uid fragment keeps `a.b` and `a-b` (or a deleted and re-created
    object) apart; the generation lets a failed build be retried by a spec change that keeps the
    cache key (e.g. a longer timeoutSeconds) without waiting for the old Job to be gone.
    """
    base = re.sub(r"[^a-z0-9-]", "-", eb_name.lower()).strip("-") or "eb"
    uid_part = re.sub(r"[^a-z0-9]", "", eb_uid.lower())[:UID_IN_NAME] or "0"
    suffix = f"-{uid_part}-{key[:KEY_IN_NAME]}-{generation}"
    room = MAX_NAME - len(suffix)
    if len(base) > room:
        # Truncated names keep a hash of the full name so two long names do not collide.
        digest = hashlib.sha256(eb_name.encode()).hexdigest()[:6]
        base = base[: room - 7].rstrip("-") + "-" + digest
    return base + suffix


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta: Mapping[str, Any] = obj.get("metadata") or {}
    return meta


def _controller(meta: Mapping[str, Any]) -> Mapping[str, Any] | None:
    refs = [r for r in meta.get("ownerReferences") or () if r.get("controller")]
    return refs[0] if len(refs) == 1 else None


def owner_of(job: Mapping[str, Any]) -> tuple[str, str] | None:
    """(EngineBuild uid, name) when this Job is one the controller made; None for anything else.

    Labels are not proof (anyone who may create Jobs can copy them): a Job counts only if its
    controller ownerReference is an EngineBuild, the labels and annotations name that same object,
    and its name is the one the controller gives a Job for that object, key and generation. Owner
    references are namespace-local, so the EngineBuild is in the Job's namespace.
    """
    meta = _meta(job)
    ref = _controller(meta)
    labels, ann = meta.get("labels") or {}, meta.get("annotations") or {}
    if ref is None or ref.get("kind") != KIND or str(ref.get("apiVersion", "")).split("/")[0] != GROUP:
        return None
    uid, name = str(ref.get("uid") or ""), str(ref.get("name") or "")
    if not uid or labels.get(LABEL_UID) != uid or ann.get(ANN_NAME) != name:
        return None
    key, gen = str(ann.get(ANN_KEY) or ""), str(ann.get(ANN_GENERATION) or "")
    if not key or not gen.isdigit() or meta.get("name") != job_name(name, uid, key, int(gen)):
        return None
    return uid, name


def pod_owner_of(pod: Mapping[str, Any]) -> tuple[str, str] | None:
    """(EngineBuild uid, name) for a Pod of one of our Jobs (its controller is that Job, by name)."""
    meta = _meta(pod)
    ref = _controller(meta)
    labels, ann = meta.get("labels") or {}, meta.get("annotations") or {}
    if ref is None or ref.get("kind") != "Job":
        return None
    uid, name = str(labels.get(LABEL_UID) or ""), str(ann.get(ANN_NAME) or "")
    key, gen = str(ann.get(ANN_KEY) or ""), str(ann.get(ANN_GENERATION) or "")
    if not uid or not name or not key or not gen.isdigit():
        return None
    if ref.get("name") != job_name(name, uid, key, int(gen)):
        return None
    return uid, name


def owner_reference(eb_name: str, eb_uid: str) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": KIND, "name": eb_name, "uid": eb_uid, "controller": True}


def labels(eb_uid: str, key: str) -> dict[str, str]:
    return {MANAGED_BY: MANAGER, COMPONENT: "builder", LABEL_UID: eb_uid, LABEL_KEY: key[:32]}


def job_annotations(eb_name: str, key: str, generation: int) -> dict[str, str]:
    return {ANN_NAME: eb_name, ANN_KEY: key, ANN_GENERATION: str(generation)}


def _metadata(name: str, namespace: str, eb_name: str, eb_uid: str, plan: BuildPlan) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": namespace,
        "labels": labels(eb_uid, plan.cache_key),
        "annotations": job_annotations(eb_name, plan.cache_key, plan.generation),
        "ownerReferences": [owner_reference(eb_name, eb_uid)],
    }


def plan_json(plan: BuildPlan) -> str:
    """The plan as the builder reads it: compact JSON (it is part of the Job object)."""
    return plan.model_dump_json(by_alias=True, exclude_none=True)


def _secret_env(role: str, ref: SecretReference | None) -> list[dict[str, Any]]:
    if ref is None:
        return []
    key_var, secret_var = CREDENTIAL_ENV[role]
    return [
        {"name": key_var, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.access_key_id_key}}},
        {
            "name": secret_var,
            "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.secret_access_key_key}},
        },
    ]


def _pvc_claim(uri: str) -> str | None:
    if not uri.startswith("pvc://"):
        return None
    return uri[len("pvc://") :].split("/", 1)[0]


def _resources(spec: EngineBuildSpec, gpu_count: int) -> dict[str, Any]:
    res = spec.target.resources
    requests = dict(res.requests) if res and res.requests else {}
    limits = dict(res.limits) if res and res.limits else {}
    if gpu_count > 0:
        # Extended resources must have requests == limits.
        requests[GPU_RESOURCE] = gpu_count
        limits[GPU_RESOURCE] = gpu_count
    else:
        requests.pop(GPU_RESOURCE, None)
        limits.pop(GPU_RESOURCE, None)
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = {k: str(v) for k, v in requests.items()}
    if limits:
        out["limits"] = {k: str(v) for k, v in limits.items()}
    return out


EXIT_INVALID_INPUT = 2  # pitcrew_builder.errors.EXIT_INVALID_INPUT (the builder's contract)


def pod_failure_policy() -> dict[str, Any]:
    """Invalid input (builder exit 2: bad checkpoint, bad plan) fails the Job at once instead of
    being retried on a GPU; a pod evicted or preempted (DisruptionTarget) does not use up a retry."""
    return {
        "rules": [
            {
                "action": "FailJob",
                "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [EXIT_INVALID_INPUT]},
            },
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
        ]
    }


def render_job(
    *,
    namespace: str,
    eb_name: str,
    eb_uid: str,
    spec: EngineBuildSpec,
    resolved: Resolved,
    plan: BuildPlan,
    settings: Settings,
) -> dict[str, Any]:
    name = job_name(eb_name, eb_uid, plan.cache_key, plan.generation)
    meta = _metadata(name, namespace, eb_name, eb_uid, plan)
    meta["annotations"][sharing.ANN_ENGINE] = sharing.engine_ident(
        plan.output.uri, plan.output.endpoint, namespace, plan.cache_key
    )
    volumes: list[dict[str, Any]] = [
        {
            "name": "scratch",
            "emptyDir": {"sizeLimit": settings.scratch_size_limit} if settings.scratch_size_limit else {},
        },
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "scratch", "mountPath": SCRATCH_DIR},
    ]
    source_claim, output_claim = _pvc_claim(spec.source.uri), _pvc_claim(spec.output.uri)
    for claim, read_only in ((output_claim, False), (source_claim, True)):
        if claim is None or any(
            v.get("persistentVolumeClaim", {}).get("claimName") == claim for v in volumes
        ):
            continue  # one volume per claim; the output mount (read-write) wins if both share it
        vol = f"pvc-{len(volumes)}"
        volumes.append({"name": vol, "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only}})
        mounts.append({"name": vol, "mountPath": f"{PVC_ROOT}/{claim}", "readOnly": read_only})
    env: list[dict[str, Any]] = [
        {"name": PLAN_JSON_ENV, "value": plan_json(plan)},
        {"name": "PITCREW_SCRATCH", "value": SCRATCH_DIR},
        {"name": "PITCREW_PVC_ROOT", "value": PVC_ROOT},
        {"name": "HOME", "value": SCRATCH_DIR},
        {"name": "TMPDIR", "value": SCRATCH_DIR},
        *_secret_env("source", spec.source.credentials_secret_ref),
        *_secret_env("output", spec.output.credentials_secret_ref),
    ]
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": resolved.builder_image,
        "imagePullPolicy": settings.image_pull_policy,
        # The image's ENTRYPOINT is pitcrew-builder; the plan comes from $PITCREW_PLAN_JSON.
        "args": ["build"],
        "env": env,
        "volumeMounts": mounts,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True,
        },
    }
    resources = _resources(spec, resolved.gpu_count)
    if resources:
        container["resources"] = resources
    node_selector = dict(spec.target.node_selector or {})
    if spec.target.gpu_product:
        node_selector[GPU_PRODUCT_LABEL] = spec.target.gpu_product
    elif resolved.gpu_count > 0:
        # Only a compute capability: GPU feature discovery's labels, so an SM 8.0 node cannot
        # build the engine filed under another SM's key.
        major, _, minor = resolved.compute_capability.partition(".")
        node_selector[GPU_MAJOR_LABEL] = major
        node_selector[GPU_MINOR_LABEL] = minor or "0"
    tolerations = [t.to_api() for t in spec.target.tolerations or ()]
    if resolved.gpu_count > 0 and not any(t.get("key") == GPU_RESOURCE for t in tolerations):
        # GPU nodes are commonly tainted nvidia.com/gpu:NoSchedule; a GPU build belongs there.
        tolerations.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
    uid = settings.run_as_user
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": uid,
            "runAsGroup": uid,
            "fsGroup": uid,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    if tolerations:
        pod_spec["tolerations"] = tolerations
    if spec.target.priority_class_name:
        pod_spec["priorityClassName"] = spec.target.priority_class_name
    job_spec: dict[str, Any] = {
        "backoffLimit": spec.retry_limit,
        "podFailurePolicy": pod_failure_policy(),
        "activeDeadlineSeconds": spec.timeout_seconds,
        "ttlSecondsAfterFinished": settings.job_ttl_seconds,
        "template": {
            "metadata": {
                "labels": labels(eb_uid, plan.cache_key),
                "annotations": dict(meta["annotations"]),
            },
            "spec": pod_spec,
        },
    }
    meta["annotations"][ANN_SCHEDULING] = scheduling_digest(job_spec)
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": job_spec}


SCHEDULING_POD_FIELDS = ("nodeSelector", "tolerations", "priorityClassName", "affinity")
SCHEDULING_JOB_FIELDS = ("activeDeadlineSeconds", "backoffLimit")


def scheduling_digest(job_spec: Mapping[str, Any]) -> str:
    """sha256 over a Job's scheduling: the container's resources, the pod's node selection,
    tolerations and priority, and the Job's deadline and retries. The engine does not depend on
    these (they are not in the cache key); the build's chance to run does."""
    pod = job_spec.get("template", {}).get("spec", {})
    container = (pod.get("containers") or [{}])[0]
    parts = {
        "resources": container.get("resources"),
        **{f: pod.get(f) for f in SCHEDULING_POD_FIELDS},
        **{f: job_spec.get(f) for f in SCHEDULING_JOB_FIELDS},
    }
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]
