"""Watches the pods bound to this node and hands each to a PodWorker; finalizes deleted pods."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..kubeapi import ApiError, KubeClient, WatchExpired
from .config import LocalNodeConfig
from .lookup import ApiLookup
from .runner import PodWorker

log = logging.getLogger(__name__)

Obj = dict[str, Any]
TERMINAL = ("Succeeded", "Failed")


class PodAgent:
    def __init__(self, client: KubeClient, cfg: LocalNodeConfig) -> None:
        self.client = client
        self.cfg = cfg
        self.lookup = ApiLookup(client)
        self.workers: dict[str, PodWorker] = {}
        self._deleting: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        # Deletions wait out grace periods; they must not block the watch loop.
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="delete")

    # -- watch loop --------------------------------------------------------------------------

    def run(self) -> None:
        """List, then watch from the list's resourceVersion; relist on 410 Gone or any error."""
        selector = {"fieldSelector": f"spec.nodeName={self.cfg.node_name}"}
        while not self._stop.is_set():
            try:
                listing = self.client.get("/api/v1/pods", **selector)
                rv = listing["metadata"]["resourceVersion"]
                seen = set()
                for pod in listing.get("items", []):
                    seen.add(pod["metadata"]["uid"])
                    self.handle("MODIFIED", pod)
                self._forget_missing(seen)
                while not self._stop.is_set():
                    for event in self.client.watch("/api/v1/pods", rv, timeout_seconds=240, **selector):
                        obj = event["object"]
                        rv = obj.get("metadata", {}).get("resourceVersion", rv)
                        if event["type"] != "BOOKMARK":
                            self.handle(event["type"], obj)
                        if self._stop.is_set():
                            break
            except WatchExpired:
                log.info("watch expired (410 Gone), relisting")
            except Exception as e:
                if self._stop.is_set():
                    break
                log.warning("pod watch failed, relisting in 1 s: %s", e)
                self._stop.wait(1.0)

    def handle(self, etype: str, pod: Obj) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        with self._lock:
            worker = self.workers.get(uid)
        if etype == "DELETED":
            if worker is not None and not worker.done.is_set():
                self._pool.submit(self._kill, worker, 0.0, False)
            return
        if meta.get("deletionTimestamp"):
            with self._lock:
                if uid in self._deleting:
                    return
                self._deleting.add(uid)
            grace = float(
                meta.get(
                    "deletionGracePeriodSeconds", pod.get("spec", {}).get("terminationGracePeriodSeconds", 30)
                )
            )
            self._pool.submit(self._finalize, pod, worker, grace)
            return
        if worker is not None:
            worker.pod = pod
            return
        phase = pod.get("status", {}).get("phase", "Pending")
        if phase in TERMINAL:
            return  # finished before this localnode started; nothing to run
        if phase == "Running":
            # A previous localnode ran it and died with it; its processes are gone.
            self._mark_lost(pod)
            return
        worker = PodWorker(pod, self.client, self.lookup, self.cfg)
        with self._lock:
            self.workers[uid] = worker
        log.info("pod admitted", extra={"pod": f"{meta['namespace']}/{meta['name']}", "uid": uid})
        worker.start()

    def _forget_missing(self, present: set[str]) -> None:
        """After a relist: pods that vanished while we were not watching must not keep running."""
        with self._lock:
            gone = [w for uid, w in self.workers.items() if uid not in present]
        for w in gone:
            if not w.done.is_set():
                self._pool.submit(self._kill, w, 0.0, False)

    # -- deletion ----------------------------------------------------------------------------

    def _kill(self, worker: PodWorker, grace: float, delete: bool) -> None:
        worker.deleting = True
        worker.terminate(grace)
        worker.done.wait(timeout=10)
        with self._lock:
            self.workers.pop(worker.uid, None)

    def _finalize(self, pod: Obj, worker: PodWorker | None, grace: float) -> None:
        meta = pod["metadata"]
        name = f"{meta['namespace']}/{meta['name']}"
        try:
            if worker is not None and not worker.done.is_set():
                log.info("pod deleted, stopping it", extra={"pod": name, "grace_seconds": grace})
                self._kill(worker, grace, True)
            # What a kubelet does once the containers are gone: remove the object for good.
            self.client.delete(
                f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                {"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}},
            )
            log.info("pod removed", extra={"pod": name})
        except ApiError as e:
            if e.status not in (404, 409):
                log.warning("pod removal failed: %s", e, extra={"pod": name})
        except Exception:
            log.exception("pod removal failed", extra={"pod": name})
        finally:
            with self._lock:
                self._deleting.discard(meta["uid"])
                self.workers.pop(meta["uid"], None)
            if worker is not None:
                worker.remove_dir()

    def _mark_lost(self, pod: Obj) -> None:
        meta = pod["metadata"]
        try:
            self.client.patch(
                f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status",
                {
                    "status": {
                        "phase": "Failed",
                        "reason": "NodeRestarted",
                        "message": "the local node restarted while the pod ran",
                    }
                },
            )
        except ApiError as e:
            log.warning("could not mark lost pod failed: %s", e)

    # -- shutdown ----------------------------------------------------------------------------

    def stop(self, grace: float = 5.0) -> None:
        """Stops the watch and every pod's processes (SIGTERM, SIGKILL after `grace`)."""
        self._stop.set()
        with self._lock:
            workers = list(self.workers.values())
        threads = []
        for w in workers:
            if not w.done.is_set():
                w.deleting = True
                t = threading.Thread(target=w.terminate, args=(grace,), daemon=True)
                t.start()
                threads.append(t)
        deadline = time.monotonic() + grace + 6
        for t in threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        self._pool.shutdown(wait=False, cancel_futures=True)
