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
from pitcrew.api.v1alpha1 import MAX_PUBLISHED_ENGINES

REASON_WAITING = Reason.WAITING_FOR_SHARED_BUILD
ANN_ENGINE = "pitcrew.dev/engine"  # on builder Jobs: engine_ident of what they publish


def engine_at(engine_uri: str, endpoint: str | None, namespace: str) -> str:
    """Where an engine is published, as one comparable string.

    s3://: the endpoint and the normalised engine URI (the same bucket on two servers is two
    places); pvc://: the namespace and the URI (claims are namespace-local).
    """
    uri = cachekey.normalize_uri(engine_uri).rstrip("/") + "/"
    if uri.startswith("s3://"):
        return f"{cachekey.normalize_endpoint(endpoint)} {uri}"
    return f"{namespace} {uri}"


def engine_ident(output_uri: str, endpoint: str | None, namespace: str, key: str) -> str:
    """engine_at of the engine of `key` under an output location."""
    return engine_at(cachekey.normalize_uri(output_uri).rstrip("/") + f"/{key}/", endpoint, namespace)


def remember_published(
    published: list[Mapping[str, Any]] | None,
    uri: str,
    endpoint: str | None,
    bound: int = MAX_PUBLISHED_ENGINES,
) -> list[dict[str, Any]]:
    """status.publishedEngines after publishing `uri`: newest last, no duplicates, at most `bound`."""
    entry = {"uri": uri, "endpoint": endpoint or ""}
    kept = [
        dict(e) for e in published or () if (e.get("uri"), e.get("endpoint") or "") != (uri, endpoint or "")
    ]
    return [*kept, entry][-bound:]


def _output(body: Mapping[str, Any]) -> tuple[str, str | None]:
    out = (body.get("spec") or {}).get("output") or {}
    return str(out.get("uri") or ""), out.get("endpoint")


def engines_in_use(body: Mapping[str, Any], default_endpoint: str | None) -> frozenset[str]:
    """The engines an EngineBuild points its readers at: its cache key under its output, and
    status.engine (the previous engine during a builder upgrade). None while it is being deleted."""
    if (body.get("metadata") or {}).get("deletionTimestamp"):
        return frozenset()
    return frozenset(engine_at(uri, ep, _namespace(body)) for uri, ep in _current(body, default_endpoint))


def _namespace(body: Mapping[str, Any]) -> str:
    return str((body.get("metadata") or {}).get("namespace") or "")


def _current(body: Mapping[str, Any], default_endpoint: str | None) -> list[tuple[str, str | None]]:
    status = body.get("status") or {}
    output, endpoint = _output(body)
    endpoint = endpoint or default_endpoint
    out = []
    if status.get("cacheKey") and output:
        out.append((cachekey.normalize_uri(output).rstrip("/") + f"/{status['cacheKey']}/", endpoint))
    if (status.get("engine") or {}).get("uri"):
        out.append((str(status["engine"]["uri"]), endpoint))
    return out


def engines_to_clean(body: Mapping[str, Any], default_endpoint: str | None) -> list[tuple[str, str | None]]:
    """(engine URI, endpoint) of every S3 engine an EngineBuild published (status.publishedEngines)
    or points at now, once each: what deletionPolicy Delete removes (unless someone else uses it)."""
    candidates = [
        (str(e.get("uri") or ""), e.get("endpoint") or default_endpoint)
        for e in (body.get("status") or {}).get("publishedEngines") or ()
    ]
    candidates += _current(body, default_endpoint)
    seen: set[str] = set()
    out = []
    for uri, endpoint in candidates:
        ident = engine_at(uri, endpoint, _namespace(body))
        if uri.startswith("s3://") and ident not in seen:
            seen.add(ident)
            out.append((uri, endpoint))
    return out


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
