import json
from datetime import UTC, datetime, timedelta
from typing import Any

from pitcrew import jobstatus
from pitcrew.api.plan import BuildResult
from pitcrew.api.v1alpha1 import Phase

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
T0 = "2026-01-01T11:59:00Z"


def job(*conds: tuple[str, str], **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "j"},
        "status": {
            "startTime": T0,
            "conditions": [
                {"type": t, "status": "True", "reason": r, "lastTransitionTime": T0} for t, r in conds
            ],
            **status,
        },
    }


def pod(name: str = "p1", phase: str = "Pending", *, state: dict[str, Any] | None = None,
        scheduled: tuple[str, str, str] | None = None, created: str = T0) -> dict[str, Any]:  # fmt: skip
    status: dict[str, Any] = {"phase": phase}
    if state is not None:
        status["containerStatuses"] = [{"name": "builder", "image": "img:1", "state": state}]
    if scheduled is not None:
        s, reason, msg = scheduled
        status["conditions"] = [
            {
                "type": "PodScheduled",
                "status": s,
                "reason": reason,
                "message": msg,
                "lastTransitionTime": created,
            }
        ]
    return {
        "metadata": {"name": name, "creationTimestamp": created},
        "spec": {"nodeName": "n1"},
        "status": status,
    }


def evaluate(j: dict[str, Any], pods: list[dict[str, Any]], grace: float = 60) -> jobstatus.Verdict:
    return jobstatus.evaluate(j, pods, now=NOW, unschedulable_grace_seconds=grace, timeout_seconds=600)


def term(code: int, reason: str = "Error", message: str = "") -> dict[str, Any]:
    return {"terminated": {"exitCode": code, "reason": reason, "message": message, "finishedAt": T0}}


OK = BuildResult(ok=True, cache_key="k", engine_uri="s3://b/k/", manifest_sha256="d" * 64)


def test_no_pod_yet_is_queued() -> None:
    v = evaluate(job(), [])
    assert (v.phase, v.reason) == (Phase.QUEUED, jobstatus.WAITING)


def test_unschedulable_within_grace_is_queued_then_fails() -> None:
    msg = "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector."
    p = pod(scheduled=("False", "Unschedulable", msg), created=(NOW - timedelta(seconds=30)).isoformat())
    v = evaluate(job(active=1), [p])
    assert (v.phase, v.reason) == (Phase.QUEUED, jobstatus.SCHEDULING) and msg in v.message
    v = evaluate(job(active=1), [p], grace=10)
    assert (v.phase, v.reason, v.stop_job) == (Phase.FAILED, jobstatus.UNSCHEDULABLE, True)
    assert "nvidia.com/gpu.product" in v.message


def test_scheduled_and_running() -> None:
    v = evaluate(
        job(active=1), [pod(scheduled=("True", "", ""), state={"waiting": {"reason": "ContainerCreating"}})]
    )
    assert (v.phase, v.reason) == (Phase.QUEUED, jobstatus.STARTING)
    v = evaluate(job(active=1), [pod(phase="Running", state={"running": {}})])
    assert (v.phase, v.reason, v.attempts) == (Phase.BUILDING, jobstatus.RUNNING, 1)


def test_image_pull_errors() -> None:
    for reason in ("ErrImagePull", "ImagePullBackOff", "InvalidImageName"):
        v = evaluate(job(active=1), [pod(state={"waiting": {"reason": reason, "message": "not found"}})])
        assert (v.phase, v.reason, v.stop_job) == (Phase.FAILED, jobstatus.IMAGE_PULL_ERROR, True)
        assert "img:1" in v.message and reason in v.message


def test_success_reads_the_build_result() -> None:
    p = pod(phase="Succeeded", state=term(0, "Completed", OK.model_dump_json(by_alias=True)))
    v = evaluate(job(("SuccessCriteriaMet", ""), ("Complete", ""), succeeded=1), [p])
    assert v.phase == Phase.SUCCEEDED and v.result == OK


def test_success_without_result_is_a_failure() -> None:
    p = pod(phase="Succeeded", state=term(0, "Completed", "bye"))
    v = evaluate(job(("Complete", ""), succeeded=1), [p])
    assert (v.phase, v.reason) == (Phase.FAILED, jobstatus.BAD_RESULT) and "bye" in v.message


def test_deadline_exceeded() -> None:
    v = evaluate(job(("Failed", "DeadlineExceeded"), failed=1), [pod(phase="Failed", state=term(143))])
    assert (v.phase, v.reason) == (
        Phase.FAILED,
        jobstatus.DEADLINE_EXCEEDED,
    ) and "timeoutSeconds" in v.message


def test_oom_killed() -> None:
    v = evaluate(
        job(("Failed", "BackoffLimitExceeded"), failed=1), [pod(phase="Failed", state=term(137, "OOMKilled"))]
    )
    assert (v.phase, v.reason) == (Phase.FAILED, jobstatus.OOM_KILLED) and "memory" in v.message


def test_evicted_names_the_kubelets_reason_and_the_fix() -> None:
    scratch = 'Usage of EmptyDir volume "scratch" exceeds the limit "8Mi". '
    other = "The node was low on resource: memory. "
    for message, fix in ((scratch, True), (other, False)):
        p = pod(phase="Failed", state=term(137, "Error", "fake builder: wrote 64 MiB"))
        p["status"].update(reason="Evicted", message=message)
        v = evaluate(job(("Failed", "BackoffLimitExceeded"), failed=1), [p])
        assert (v.phase, v.reason) == (Phase.FAILED, jobstatus.EVICTED)
        assert v.message.startswith(f"the kubelet evicted the builder pod: {message.strip()}"), v.message
        assert ("PITCREW_SCRATCH_SIZE_LIMIT" in v.message) == fix, v.message


def test_builder_reported_reason() -> None:
    result = BuildResult(
        ok=False, cache_key="k", reason="InvalidCheckpoint", message="config.json: no hidden_size"
    )
    p = pod(phase="Failed", state=term(3, "Error", result.model_dump_json(by_alias=True)))
    v = evaluate(job(("Failed", "BackoffLimitExceeded"), failed=1), [p])
    assert (v.phase, v.reason, v.message) == (
        Phase.FAILED,
        "InvalidCheckpoint",
        "config.json: no hidden_size",
    )


def test_builder_crash_keeps_last_words() -> None:
    tail = "Traceback (most recent call last):\n ...\nRuntimeError: CUDA error: out of memory"
    p = pod(phase="Failed", state=term(1, "Error", tail))
    v = evaluate(job(("Failed", "BackoffLimitExceeded"), failed=1), [p])
    assert v.reason == jobstatus.BUILDER_ERROR and "CUDA error" in v.message and "code 1" in v.message


def test_result_as_last_log_line() -> None:
    result = BuildResult(ok=False, cache_key="k", reason="SourceUnavailable", message="403")
    logs = "step 1\nstep 2\n" + json.dumps(result.model_dump(by_alias=True, exclude_none=True))
    assert jobstatus.parse_result(logs) == result


def test_retry_shows_the_previous_failure() -> None:
    failed = pod("p1", phase="Failed", state=term(137, "OOMKilled"), created="2026-01-01T11:58:00Z")
    running = pod("p2", phase="Running", state={"running": {}}, created="2026-01-01T11:59:30Z")
    v = evaluate(job(active=1, failed=1), [running, failed])
    assert (v.phase, v.attempts) == (Phase.BUILDING, 2) and "OOMKilled" in v.message


def test_long_messages_are_cut_from_the_front() -> None:
    assert jobstatus.last_words("x" * 1000 + "END").endswith("END")
    assert len(jobstatus.last_words("x" * 1000)) <= jobstatus.LAST_WORDS + 1


def test_container_that_cannot_start() -> None:
    p = pod(phase="Failed", state=term(128, "RunContainerError", 'exec: "x": executable file not found'))
    v = evaluate(job(("Failed", "BackoffLimitExceeded"), failed=1), [p])
    assert v.reason == jobstatus.START_ERROR and "spec.builderImage" in v.message


def test_finished_pod_before_the_job_verdict_is_settling() -> None:
    # The pod is done but the Job controller has not set Complete/Failed yet: nothing new to show
    # (not "waiting for a pod"), so the controller writes nothing and waits for the Job's event.
    done = pod(phase="Succeeded", state=term(0, "Completed", OK.model_dump_json(by_alias=True)))
    v = evaluate(job(active=0), [done])
    assert v.settling and v.phase == Phase.BUILDING
    failed = pod(phase="Failed", state=term(1))
    last = {**job(failed=1), "spec": {"backoffLimit": 0}}
    v = evaluate(last, [failed])
    assert v.settling
    # With a retry left it is a real Queued/Retrying.
    more = {**job(failed=1), "spec": {"backoffLimit": 1}}
    v = evaluate(more, [failed])
    assert (v.phase, v.reason, v.settling) == (Phase.QUEUED, jobstatus.RETRYING, False)
