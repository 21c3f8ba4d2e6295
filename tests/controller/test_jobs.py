from typing import Any

import pytest

from pitcrew import jobs, plans
from pitcrew.api.plan import CREDENTIAL_ENV, PLAN_JSON_ENV, BuildPlan
from pitcrew.settings import Settings
from pitcrew.validation import validate

from .helpers import spec

S = Settings(job_ttl_seconds=600, run_as_user=1234)


def render(**overrides: Any) -> tuple[dict[str, Any], BuildPlan]:
    s = spec(**overrides)
    secrets = {"s3": frozenset({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"})}
    resolved = validate(s, S, secret_keys=secrets)
    planned = plans.make_plan(
        s, resolved, S, namespace="ns", name="llama", generation=3, source_identity="revision:x"
    )
    job = jobs.render_job(
        namespace="ns",
        eb_name="llama",
        eb_uid="uid-1",
        spec=s,
        resolved=resolved,
        plan=planned.plan,
        settings=S,
    )
    return job, planned.plan


def test_job_name_is_deterministic_and_a_dns_label() -> None:
    key, uid = "f" * 64, "0a1b2c3d-0000-4000-8000-000000000000"
    assert jobs.job_name("llama", uid, key, 1) == "llama-0a1b2c-ffffffff-1"
    long = "a" * 253
    n = jobs.job_name(long, uid, key, 12)
    assert len(n) <= 63 and n.endswith("-0a1b2c-ffffffff-12")
    assert n != jobs.job_name("a" * 252 + "b", uid, key, 12)  # truncated names keep a hash of the name
    assert jobs.job_name("My.Model", uid, key, 1) == "my-model-0a1b2c-ffffffff-1"
    # `a.b` and `a-b` are two objects (two uids): two names.
    assert jobs.job_name("a.b", uid, key, 1) != jobs.job_name("a-b", "99" + uid[2:], key, 1)


def _ours(uid: str = "u-1", name: str = "llama", key: str = "f" * 64, gen: int = 1) -> dict[str, Any]:
    return {
        "metadata": {
            "name": jobs.job_name(name, uid, key, gen),
            "labels": jobs.labels(uid, key),
            "annotations": jobs.job_annotations(name, key, gen),
            "ownerReferences": [jobs.owner_reference(name, uid)],
        }
    }


def _set(obj: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    node = obj
    parts = path.split(".")
    for p in parts[:-1]:
        node = node[int(p)] if isinstance(node, list) else node[p]
    node[parts[-1]] = value
    return obj


@pytest.mark.parametrize(
    ("change", "ours"),
    [
        (None, True),
        # Labels alone (what the controller used to trust) are not proof:
        (("metadata.ownerReferences", []), False),
        (("metadata.ownerReferences.0.controller", False), False),
        (("metadata.ownerReferences.0.kind", "Deployment"), False),
        (("metadata.ownerReferences.0.apiVersion", "evil.dev/v1alpha1"), False),
        (("metadata.ownerReferences.0.uid", "u-2"), False),  # owner and label disagree
        (("metadata.annotations.pitcrew.dev/enginebuild", "other"), False),
        (("metadata.name", "llama-forged"), False),  # not the name the controller gives
        (("metadata.annotations.pitcrew.dev/generation", "x"), False),
    ],
)
def test_owner_of_accepts_only_jobs_the_controller_made(change: tuple[str, Any] | None, ours: bool) -> None:
    job = _ours()
    if change is not None:
        path, value = change
        if path.startswith("metadata.annotations."):
            job["metadata"]["annotations"][path.removeprefix("metadata.annotations.")] = value
        else:
            _set(job, path, value)
    assert (jobs.owner_of(job) == ("u-1", "llama")) is ours


def test_pod_owner_is_the_expected_job() -> None:
    job = _ours()
    pod = {
        "metadata": {
            "labels": job["metadata"]["labels"],
            "annotations": job["metadata"]["annotations"],
            "ownerReferences": [{"kind": "Job", "name": job["metadata"]["name"], "controller": True}],
        }
    }
    assert jobs.pod_owner_of(pod) == ("u-1", "llama")
    pod["metadata"]["ownerReferences"][0]["name"] = "someone-elses-job"
    assert jobs.pod_owner_of(pod) is None


def test_job_shape() -> None:
    job, plan = render(
        **{
            "parallelism.tensor": 2,
            "timeoutSeconds": 900,
            "retryLimit": 2,
            "target.nodeSelector": {"pool": "gpu"},
            "target.tolerations": [
                {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}
            ],
            "target.resources": {"requests": {"memory": "64Gi"}, "limits": {"memory": "64Gi"}},
            "target.priorityClassName": "batch-low",
            "output.credentialsSecretRef": {"name": "s3"},
        }
    )
    name = job["metadata"]["name"]
    assert name.startswith("llama-") and name.endswith("-3")
    owner = job["metadata"]["ownerReferences"][0]
    assert owner == {
        "apiVersion": "pitcrew.dev/v1alpha1",
        "kind": "EngineBuild",
        "name": "llama",
        "uid": "uid-1",
        "controller": True,
    }
    assert job["metadata"]["labels"][jobs.LABEL_UID] == "uid-1"
    assert job["metadata"]["annotations"][jobs.ANN_KEY] == plan.cache_key
    js = job["spec"]
    assert (
        js["activeDeadlineSeconds"] == 900
        and js["backoffLimit"] == 2
        and js["ttlSecondsAfterFinished"] == 600
    )
    pod = js["template"]["spec"]
    assert js["template"]["metadata"]["labels"] == job["metadata"]["labels"]
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 1234
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["nodeSelector"] == {"pool": "gpu", "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["tolerations"][0]["key"] == "dedicated"
    assert pod["priorityClassName"] == "batch-low"
    (c,) = pod["containers"]
    assert c["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
    }
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert c["resources"]["limits"] == {"memory": "64Gi", "nvidia.com/gpu": "2"}
    assert c["resources"]["requests"]["nvidia.com/gpu"] == "2"
    assert c["image"] == "ghcr.io/pitcrew/builder:0.1.0" and c["args"] == ["build"] and "command" not in c
    env = {e["name"]: e for e in c["env"]}
    key_var, secret_var = CREDENTIAL_ENV["output"]
    assert env[key_var]["valueFrom"]["secretKeyRef"] == {"name": "s3", "key": "AWS_ACCESS_KEY_ID"}
    assert env[secret_var]["valueFrom"]["secretKeyRef"] == {"name": "s3", "key": "AWS_SECRET_ACCESS_KEY"}
    assert not any("value" in e and "SECRET" in e["name"] for e in c["env"])  # no literal credentials
    # The plan travels in the Job itself: no ConfigMap, no plan volume, no file path.
    assert BuildPlan.model_validate_json(env[PLAN_JSON_ENV]["value"]) == plan
    assert "PITCREW_PLAN" not in env and "valueFrom" not in env[PLAN_JSON_ENV]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert set(mounts) == {"/scratch"}
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols == {"scratch": {"name": "scratch", "emptyDir": {}}}
    assert not any("configMap" in v or "projected" in v for v in pod["volumes"])


def test_checkpoint_backend_requests_no_gpu() -> None:
    job, _ = render(backend="checkpoint")
    pod = job["spec"]["template"]["spec"]
    assert "resources" not in pod["containers"][0]
    assert "tolerations" not in pod


def test_pvc_source_is_mounted_read_only() -> None:
    job, plan = render(**{"source.uri": "pvc://ckpts/llama", "source.revision": "v1"})
    pod = job["spec"]["template"]["spec"]
    vol = next(v for v in pod["volumes"] if "persistentVolumeClaim" in v)
    assert vol["persistentVolumeClaim"] == {"claimName": "ckpts", "readOnly": True}
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == vol["name"])
    assert mount == {"name": vol["name"], "mountPath": "/mnt/pvc/ckpts", "readOnly": True}
    assert plan.source.uri == "pvc://ckpts/llama"


def test_plan_json_is_compact_and_round_trips() -> None:
    job, plan = render()
    (c,) = job["spec"]["template"]["spec"]["containers"]
    value = next(e["value"] for e in c["env"] if e["name"] == PLAN_JSON_ENV)
    assert value == jobs.plan_json(plan) and "\n" not in value
    assert BuildPlan.model_validate_json(value) == plan
    # Well under the Job's practical size: the plan is KiB, an object may be 1.5 MiB.
    assert len(value) < 16 * 1024
    # The cache key (and so the Job name) does not depend on how the plan is passed.
    assert plan.cache_key in value and job["metadata"]["annotations"][jobs.ANN_KEY] == plan.cache_key


def test_invalid_input_is_not_retried_on_a_gpu() -> None:
    from pitcrew_builder.errors import EXIT_INVALID_INPUT

    job, _ = render(retryLimit=3)
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert rules[0] == {
        "action": "FailJob",
        "onExitCodes": {"containerName": "builder", "operator": "In", "values": [EXIT_INVALID_INPUT]},
    }
    assert rules[1]["action"] == "Ignore" and rules[1]["onPodConditions"] == [{"type": "DisruptionTarget"}]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"  # podFailurePolicy needs it


@pytest.mark.parametrize(
    ("override", "changes"),
    [
        ({"timeoutSeconds": 7200}, True),
        ({"retryLimit": 3}, True),
        ({"target.resources": {"limits": {"memory": "64Gi"}}}, True),
        ({"target.tolerations": [{"key": "dedicated", "operator": "Exists"}]}, True),
        ({"target.nodeSelector": {"pool": "a"}}, True),
        ({"target.priorityClassName": "gpu-batch"}, True),
        ({"output.uri": "s3://engines/elsewhere"}, False),  # another engine place, not scheduling
        ({"source.revision": "v2"}, False),
    ],
)
def test_scheduling_digest_follows_the_pods_scheduling_only(override: dict[str, Any], changes: bool) -> None:
    """A spec change that keeps the engine but changes scheduling is told apart by this annotation
    (pitcrew.decide replaces a Job no pod of which runs yet)."""
    base, _ = render()
    other, _ = render(**override)
    a, b = (j["metadata"]["annotations"][jobs.ANN_SCHEDULING] for j in (base, other))
    assert (a != b) == changes
    assert a == jobs.scheduling_digest(base["spec"])
