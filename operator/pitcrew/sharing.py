"""One builder Job per engine: identical builds in flight share it. Pure.

Two EngineBuilds with the same cache key and the same output location would publish into the same
prefix; two Jobs would overwrite each other's files and manifest. The first one to reach Job
creation builds; the others wait as `Queued/WaitingForSharedBuild` and take the manifest when it
appears (a cache hit). If the shared build fails or goes away, the next waiter builds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pitcrew import cachekey, jobview
from pitcrew.api.reasons import Reason

REASON_WAITING = Reason.WAITING_FOR_SHARED_BUILD
ANN_ENGINE = "pitcrew.dev/engine"  # on builder Jobs: engine_ident of what they publish


def engine_ident(output_uri: str, endpoint: str | None, namespace: str, key: str) -> str:
    """Where an engine is published, as one comparable string.

    s3://: the endpoint and the normalised engine URI (the same bucket on two servers is two
    places); pvc://: the namespace and the URI (claims are namespace-local).
    """
    uri = cachekey.normalize_uri(output_uri).rstrip("/") + f"/{key}/"
    if uri.startswith("s3://"):
        return f"{cachekey.normalize_endpoint(endpoint)} {uri}"
    return f"{namespace} {uri}"


def shared_builder(
    jobs_view: Mapping[str, Mapping[str, Mapping[str, Any]]], uid: str, engine: str
) -> Mapping[str, Any] | None:
    """An active Job of another EngineBuild that publishes this engine, or None."""
    for owner, by_name in jobs_view.items():
        if owner == uid:
            continue
        for job in by_name.values():
            if (job["metadata"].get("annotations") or {}).get(ANN_ENGINE) == engine and jobview.building(job):
                return job
    return None


def waiting_message(engine_uri: str) -> str:
    return (
        f"waiting for the build of the same engine already running (it publishes {engine_uri}); "
        "this build takes its manifest when it appears"
    )
