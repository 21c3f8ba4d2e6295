"""Builder images by digest: a tag can be pushed again, a digest is what actually ran. Pure.

The operator asks no registry (none needs to be reachable from it). What a tag stands for is
learned from what the cluster ran:

- a builder pod of a Job that ran by tag: the kubelet's `status.containerStatuses[].imageID`
  (`registry/org/builder@sha256:…`, also with a `docker-pullable://` prefix). A bare
  `sha256:…` is a node-local image ID (an image without a registry digest, e.g. imported from an
  archive), not something a Job can pull, so it teaches nothing;
- a Job the operator ran by digest (`org/builder:1.2@sha256:…`, tag kept for readers).

`Known` maps each tag reference to the newest digest seen for it and when. With a known digest a
build runs its Job as `tag@sha256:…` and its cache key names the digest
(`cachekey.image_identity`); before the first pull of a tag the key names the tag. That first
build's status then records the digest it ran (`status.builderImage`: `tag@sha256:…`), and
builds after it key by the digest, so an identical spec applied later builds once more under
the digest key (an engine is never filed under a digest it was not built with). A pod that
reports another digest for a known tag means the tag was pushed again: finished builds that ran
the old digest are rebuilt like a builder upgrade (`moved`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

_DIGEST = re.compile(r"@(sha256:[0-9a-f]{64})$")


@dataclass(frozen=True)
class Seen:
    digest: str  # sha256:…
    at: str  # RFC 3339: when a pod was seen running it (or the Job that ran it was made)


Known = MutableMapping[str, Seen]


def split(image: str) -> tuple[str, str | None]:
    """(reference without the digest, digest or None)."""
    m = _DIGEST.search(image)
    return (image[: m.start()], m.group(1)) if m else (image, None)


def has_tag(ref: str) -> bool:
    """A name with an explicit tag (`org/builder:1.2`, not `host:5000/org/builder`)."""
    return ":" in ref.rsplit("/", 1)[-1]


def digest_from_image_id(image_id: str | None) -> str | None:
    """The registry digest in a container status's imageID, or None (node-local IDs, none)."""
    return split(image_id or "")[1] if "@" in (image_id or "") else None


def learn(known: Known, tag: str, digest: str, at: str) -> bool:
    """Records that `tag` ran as `digest` at `at`; the newest sighting wins. True if it changed."""
    if not has_tag(tag):
        return False
    seen = known.get(tag)
    if seen is not None and (seen.at > at or seen.digest == digest):
        return False
    known[tag] = Seen(digest, at)
    return True


def resolve(image: str, known: Mapping[str, Seen]) -> str:
    """The reference to run and key by: `tag@digest` when the tag's digest is known."""
    if split(image)[1]:
        return image  # pinned already
    seen = known.get(image)
    return f"{image}@{seen.digest}" if seen else image


def ran(job_image: str, pods: Iterable[Mapping[str, Any]], container: str) -> tuple[str, str | None]:
    """What a Job's builder actually ran, and since when: (`tag@digest` or the Job's image, time)."""
    if split(job_image)[1]:
        return job_image, None
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or ():
            digest = digest_from_image_id(cs.get("imageID"))
            if cs.get("name") == container and digest:
                state = cs.get("state") or {}
                started = (state.get("running") or state.get("terminated") or {}).get("startedAt")
                return f"{job_image}@{digest}", started or (pod.get("metadata") or {}).get(
                    "creationTimestamp"
                )
    return job_image, None


def same_builder(recorded: str, configured: str) -> bool:
    """Did a build that recorded `recorded` run the operator's `configured` image? A configured
    digest must match the recorded one; a configured tag matches its tag (that the tag now
    stands for another digest is `moved`, which knows when each was seen)."""
    old_ref, old_digest = split(recorded)
    new_ref, new_digest = split(configured)
    if new_digest:
        return old_digest == new_digest
    return old_ref == new_ref


def from_job(job: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """(tag, digest, created) of a Job the operator ran by `tag@digest`, else None."""
    ref, digest = split(str((job.get("spec") or {}).get("image") or ""))
    created = (job.get("metadata") or {}).get("creationTimestamp")
    return (ref, digest, str(created)) if digest and created and has_tag(ref) else None


def moved(recorded: str, completed_at: str | None, known: Mapping[str, Seen]) -> bool:
    """The tag a build ran by was seen running as another digest after that build finished."""
    ref, digest = split(recorded)
    seen = known.get(ref)
    return bool(
        digest and seen and seen.digest != digest and (completed_at is None or seen.at > completed_at)
    )
