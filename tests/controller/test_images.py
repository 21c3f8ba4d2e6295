"""Builder images by digest (pitcrew.images): what a tag ran as, and how the key and upgrades use it."""

from __future__ import annotations

from typing import Any

import pytest

from pitcrew import cachekey, follow, images, slots
from pitcrew.runtime import Runtime, trim_job
from pitcrew.settings import Settings

D1, D2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64
TAG = "reg.example/pitcrew/builder:2"


@pytest.mark.parametrize(
    ("image_id", "digest"),
    [
        (f"reg.example/pitcrew/builder@{D1}", D1),  # containerd with a registry digest
        (f"docker-pullable://reg.example/pitcrew/builder@{D1}", D1),  # dockershim style
        (D1, None),  # a node-local image ID (the dev cluster's imported archives): nothing a Job could pull
        ("localnode://reg.example/pitcrew/builder:2", None),  # no registry digest in it
        ("reg.example/x@sha256:abc", None),  # not a digest
        ("", None),
        (None, None),
    ],
)
def test_digest_from_image_id(image_id: str | None, digest: str | None) -> None:
    assert images.digest_from_image_id(image_id) == digest


def test_learn_keeps_the_newest_sighting_of_a_tag() -> None:
    known: dict[str, images.Seen] = {}
    assert images.learn(known, TAG, D1, "2026-12-01T10:00:00Z")
    assert not images.learn(known, TAG, D1, "2026-12-01T11:00:00Z")  # nothing new
    assert not images.learn(known, TAG, D2, "2026-12-01T09:00:00Z")  # an older sighting
    assert known[TAG].digest == D1
    assert images.learn(known, TAG, D2, "2026-12-01T12:00:00Z")  # the tag was pushed again
    assert known[TAG] == images.Seen(D2, "2026-12-01T12:00:00Z")
    assert not images.learn(known, "reg.example:5000/builder", D1, "2026-12-01T12:00:00Z")  # no tag


def test_resolve_and_the_key_use_the_digest_when_known() -> None:
    known = {TAG: images.Seen(D1, "2026-12-01T10:00:00Z")}
    assert images.resolve(TAG, known) == f"{TAG}@{D1}"
    assert images.resolve("reg.example/other:1", known) == "reg.example/other:1"  # before its first pull
    assert images.resolve(f"reg.example/x:1@{D2}", known) == f"reg.example/x:1@{D2}"  # pinned
    # The key names the digest: the same bytes under two tags are one builder; a tag is not a digest.
    assert cachekey.image_identity(images.resolve(TAG, known)) == D1
    assert cachekey.image_identity(f"reg.example/pitcrew/builder:latest@{D1}") == D1
    assert cachekey.image_identity(TAG) == TAG


def _pod(image_id: str, container: str = "builder", started: str = "2026-12-01T10:00:05Z") -> dict[str, Any]:
    return {
        "metadata": {"creationTimestamp": "2026-12-01T10:00:00Z"},
        "status": {
            "containerStatuses": [
                {"name": container, "imageID": image_id, "state": {"running": {"startedAt": started}}}
            ]
        },
    }


def test_what_a_job_ran() -> None:
    assert images.ran(TAG, [_pod(f"reg.example/pitcrew/builder@{D1}")], "builder") == (
        f"{TAG}@{D1}",
        "2026-12-01T10:00:05Z",
    )
    assert images.ran(TAG, [_pod("")], "builder") == (TAG, None)  # still pulling
    assert images.ran(TAG, [_pod(f"x@{D1}", container="sidecar")], "builder") == (TAG, None)
    assert images.ran(f"{TAG}@{D2}", [_pod(f"x@{D1}")], "builder") == (f"{TAG}@{D2}", None)  # ran pinned


def test_sync_records_and_learns_what_the_pod_ran(monkeypatch: pytest.MonkeyPatch) -> None:
    rt = Runtime(settings=Settings())
    monkeypatch.setattr(follow, "RT", rt)
    job = trim_job(
        {"metadata": {"name": "j"}, "spec": {"template": {"spec": {"containers": [{"image": TAG}]}}}}
    )
    assert follow._ran(job, [_pod(f"reg.example/pitcrew/builder@{D1}")]) == f"{TAG}@{D1}"
    assert rt.image_digests == {TAG: images.Seen(D1, "2026-12-01T10:00:05Z")}
    # After a restart the Jobs run by digest teach it again (Job view: watch or the priming LIST).
    rt2 = Runtime(settings=Settings())
    pinned = {"metadata": {"name": "j2", "creationTimestamp": "2026-12-01T11:00:00Z"}, "spec": {}}
    pinned["spec"] = {"template": {"spec": {"containers": [{"image": f"{TAG}@{D1}"}]}}}
    rt2.note_job_image(trim_job(pinned))
    assert images.resolve(TAG, rt2.image_digests) == f"{TAG}@{D1}"


DONE = "2026-12-01T10:30:00Z"


def _eb(recorded: str) -> dict[str, Any]:
    return {
        "metadata": {"generation": 1},
        "spec": {},
        "status": {
            "phase": "Succeeded",
            "observedGeneration": 1,
            "builderImage": recorded,
            "completionTime": DONE,
        },
    }


@pytest.mark.parametrize(
    ("recorded", "known", "configured", "new_image"),
    [
        # The tag was seen as another digest after this build finished: pushed again, rebuild.
        (f"{TAG}@{D1}", {TAG: images.Seen(D2, "2026-12-01T11:00:00Z")}, TAG, f"{TAG}@{D2}"),
        # Seen as another digest only before the build finished (e.g. an old Job replayed at
        # start): not a newer image; no rebuild (and never a rebuild with an older image).
        (f"{TAG}@{D1}", {TAG: images.Seen(D2, "2026-12-01T10:00:00Z")}, TAG, None),
        (f"{TAG}@{D1}", {TAG: images.Seen(D1, "2026-12-01T11:00:00Z")}, TAG, None),
        # Recorded before its digest was known: not rebuilt for learning the digest.
        (TAG, {TAG: images.Seen(D1, "2026-12-01T11:00:00Z")}, TAG, None),
        (f"{TAG}@{D1}", {}, TAG, None),
        # Another tag: an upgrade as before, to the new tag's digest if known.
        (f"{TAG}@{D1}", {}, "reg.example/pitcrew/builder:3", "reg.example/pitcrew/builder:3"),
        # The operator's image pinned by digest: the digests decide.
        (f"{TAG}@{D1}", {}, f"reg.example/pitcrew/builder@{D1}", None),
        (f"{TAG}@{D1}", {}, f"reg.example/pitcrew/builder@{D2}", f"reg.example/pitcrew/builder@{D2}"),
        (TAG, {}, f"reg.example/pitcrew/builder@{D2}", f"reg.example/pitcrew/builder@{D2}"),
    ],
)
def test_upgrades_by_tag_and_digest(
    recorded: str, known: dict[str, images.Seen], configured: str, new_image: str | None
) -> None:
    settings = Settings.from_env({"PITCREW_BUILDER_IMAGE": configured})
    up = slots.needs_upgrade(_eb(recorded), settings, known)
    assert (up.new_image if up else None) == new_image
