"""PITCREW_NAMESPACES: the operator serves only the namespaces it is given, on the real control plane.

Its own operator process (the setting differs from the lifecycle module's), with the FAKE builder.
"""

from __future__ import annotations

import time
from pathlib import Path

from pitcrew_devcluster import ClusterInfo

from .harness import (
    Operator,
    apply,
    engine_build,
    get_eb,
    install,
    new_namespace,
    owned,
    seed_checkpoint,
    wait_phase,
)


def test_only_listed_namespaces_are_served(cluster: ClusterInfo, tmp_path: Path) -> None:
    install(cluster)
    seed_checkpoint(cluster)
    served, ignored = new_namespace(cluster, "in"), new_namespace(cluster, "out")
    # An exact name and a glob that matches nothing (globs make kopf watch namespaces).
    op = Operator(cluster, tmp_path, PITCREW_NAMESPACES=f"{served},nomatch-*").start()
    try:
        # The ignored build goes first: once the served one has finished (and a poll period has
        # passed), the ignored one would have been picked up if it ever were.
        apply(cluster, engine_build(cluster, "eb", ignored))
        apply(cluster, engine_build(cluster, "eb", served))
        done = wait_phase(cluster, served, "eb", {"Succeeded", "Failed"}, timeout=90, op=op)
        assert done["status"]["phase"] == "Succeeded", done["status"]
        time.sleep(3 * float(op.env["PITCREW_POLL_SECONDS"]))
        other = get_eb(cluster, ignored, "eb")
        assert other is not None
        assert "status" not in other, other["status"]
        annotations = other["metadata"].get("annotations") or {}
        assert not any(k.startswith("pitcrew.dev/") for k in annotations), annotations
        assert owned(cluster, "jobs", ignored, other["metadata"]["uid"]) == []
        events = cluster.kubectl_json("-n", ignored, "get", "events")["items"]
        assert [e for e in events if e["involvedObject"].get("kind") == "EngineBuild"] == []
    finally:
        op.stop()
        for ns in (served, ignored):
            cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
