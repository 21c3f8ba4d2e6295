"""The local node: a test and demo component, NOT a kubelet.

It registers one Node (with `nvidia.com/gpu` capacity and GPU labels from its config), keeps it
Ready with a Lease and status heartbeats, and runs the pods bound to it as plain local processes:

* the container image picks the program through image rules passed in by the caller (the tests map
  `ghcr.io/pitcrew/builder...` to the venv's `pitcrew-builder`); other images run the pod's command
  with the venv's bin first on PATH;
* each pod gets a directory `<work_dir>/<namespace>_<name>_<uid8>/` with `root/` (the container's
  view: every volumeMount path exists there as a symlink to the volume's directory), `volumes/`
  and `containers/<name>/` (log, termination-log, pid);
* processes cannot see absolute mount paths, so occurrences of each mountPath (and of the
  terminationMessagePath) in command, args and env values are rewritten to the local directory,
  and each mount is also exposed as `PITCREW_VOLUME_<VOLUME_NAME>` (see `podspec`);
* status is reported as a kubelet would (phase, conditions, containerStatuses, exit codes,
  termination messages), restartPolicy Never / OnFailure / Always and activeDeadlineSeconds are
  honoured, and deleting a pod kills its process group (SIGTERM, SIGKILL after the grace period).

No isolation, no resource limits, no images, no networking, no `kubectl exec`; readOnly mounts,
securityContext and emptyDir sizeLimit are ignored. `kubectl logs` works (see `logserver`).
Run it with `python -m pitcrew_devcluster.localnode --config FILE` (devcluster `up` does).
"""
