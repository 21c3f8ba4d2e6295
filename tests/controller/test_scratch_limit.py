"""PITCREW_SCRATCH_SIZE_LIMIT on the real node: the kubelet measures the /scratch emptyDir and
evicts the builder pod that writes past its sizeLimit; the build fails and says why.

Its own operator process (the setting differs from the lifecycle module's), with the FAKE builder
in mode `fill-scratch` (64 MiB into /scratch, then a minute of "building").
"""

from __future__ import annotations

from pathlib import Path

from pitcrew_devcluster import ClusterInfo

from .harness import Operator, apply, engine_build, install, new_namespace, owned, seed_checkpoint, wait_phase

LIMIT = "8Mi"


def test_scratch_past_its_size_limit_is_evicted(cluster: ClusterInfo, tmp_path: Path) -> None:
    install(cluster)
    seed_checkpoint(cluster)
    ns = new_namespace(cluster, "scratch")
    op = Operator(cluster, tmp_path, PITCREW_SCRATCH_SIZE_LIMIT=LIMIT).start()
    try:
        apply(cluster, engine_build(cluster, "big", ns, mode="fill-scratch", retryLimit=0))
        # The kubelet measures volumes every 10 s (devcluster's volumeStatsAggPeriod), then evicts.
        eb = wait_phase(cluster, ns, "big", {"Failed", "Succeeded"}, timeout=150, op=op)
        (pod,) = owned(cluster, "pods", ns, eb["metadata"]["uid"])
        assert pod["spec"]["volumes"][0]["emptyDir"] == {"sizeLimit": LIMIT}
        assert pod["status"]["reason"] == "Evicted", pod["status"]
        assert f'Usage of EmptyDir volume "scratch" exceeds the limit "{LIMIT}"' in pod["status"]["message"]
        st = eb["status"]
        assert (st["phase"], st["reason"]) == ("Failed", "Evicted"), st
        assert st["message"].startswith("the kubelet evicted the builder pod: Usage of EmptyDir"), st
        assert "PITCREW_SCRATCH_SIZE_LIMIT" in st["message"], st
    finally:
        op.stop()
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
