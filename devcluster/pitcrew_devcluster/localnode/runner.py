"""Runs one pod's containers as local process groups and reports their status."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ..kubeapi import STRATEGIC_PATCH, ApiError, KubeClient
from ..procs import start_ticks
from . import podspec
from .config import LocalNodeConfig
from .podspec import ConfigMissing, PodSpecError
from .status import Conditions, ContainerState, now, pod_status, terminal_phase

log = logging.getLogger(__name__)

Obj = dict[str, Any]

TERMINATION_MESSAGE_MAX = 4096
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048


def pod_dir_name(pod: Obj) -> str:
    m = pod["metadata"]
    return f"{m['namespace']}_{m['name']}_{m['uid'][:8]}"


class PodWorker:
    """Owns one pod from admission to a terminal phase (or deletion)."""

    def __init__(self, pod: Obj, client: KubeClient, lookup: podspec.Lookup, cfg: LocalNodeConfig) -> None:
        meta = pod["metadata"]
        self.uid: str = meta["uid"]
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.pod = pod
        self.client = client
        self.lookup = lookup
        self.cfg = cfg
        self.dir = cfg.work_dir / pod_dir_name(pod)
        self.root = self.dir / "root"
        self.stopping = threading.Event()
        self.done = threading.Event()
        self.deadline_exceeded = False
        self.deleting = False  # set before terminate() on pod deletion: no status writes after that
        self._deadline: float | None = None
        self._lock = threading.Lock()  # guards status state and the process table
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._killed: set[str] = set()
        spec = pod.get("spec", {})
        self.init = [ContainerState(c["name"], c.get("image", "")) for c in spec.get("initContainers") or []]
        self.main = [ContainerState(c["name"], c.get("image", "")) for c in spec.get("containers") or []]
        self.conditions = Conditions()
        self.phase = "Pending"
        self.start_time = now()
        self._reason = ""
        self._message = ""
        self._thread = threading.Thread(
            target=self._run, name=f"pod {self.namespace}/{self.name}", daemon=True
        )
        self._fields = {"pod": f"{self.namespace}/{self.name}", "uid": self.uid}

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def terminate(self, grace: float) -> None:
        """Stops every process of the pod: SIGTERM to each group, SIGKILL after `grace`."""
        self.stopping.set()
        with self._lock:
            procs = dict(self._procs)
            self._killed.update(procs)
        for p in procs.values():
            _signal_group(p, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in procs.values():
            try:
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(p, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=5)

    # -- the pod ---------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._run_pod()
        except Exception as e:
            log.exception("pod worker crashed", extra=self._fields)
            with contextlib.suppress(Exception):
                self._finish("Failed", reason="LocalNodeError", message=str(e))
        finally:
            self.done.set()

    def _run_pod(self) -> None:
        spec = self.pod.get("spec", {})
        self.conditions.set("PodReadyToStartContainers", False)
        self.conditions.set("Initialized", not self.init, "" if not self.init else "ContainersNotInitialized")
        self.conditions.set("Ready", False, "ContainersNotReady")
        self.conditions.set("ContainersReady", False, "ContainersNotReady")
        self._publish()
        volumes = self._prepare()
        if volumes is None:
            return
        self.conditions.set("PodReadyToStartContainers", True)
        deadline_s = spec.get("activeDeadlineSeconds")
        self._deadline = time.monotonic() + float(deadline_s) if deadline_s else None

        for c_spec, c_state in zip(spec.get("initContainers") or [], self.init, strict=True):
            if not self._run_container(c_spec, c_state, volumes, init=True):
                self._finish("Failed")
                return
        self.conditions.set("Initialized", True)

        threads = [
            threading.Thread(
                target=self._run_container,
                args=(c_spec, c_state, volumes),
                name=f"{self.namespace}/{self.name}/{c_spec['name']}",
                daemon=True,
            )
            for c_spec, c_state in zip(spec.get("containers") or [], self.main, strict=True)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self._finish(terminal_phase(self.main) or "Failed")

    def _prepare(self) -> dict[str, Path] | None:
        """Creates the pod's directories and volumes; retries while ConfigMaps/Secrets are missing."""
        self.root.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                return podspec.materialize_volumes(self.pod, self.dir, self.lookup, self.cfg.pvc_dir)
            except ConfigMissing as e:
                self._wait_all(e.reason, e.message)
                if self.stopping.wait(2.0):
                    return None
            except PodSpecError as e:
                self._wait_all(e.reason, e.message)
                self._finish("Failed", reason=e.reason, message=e.message)
                return None

    def _wait_all(self, reason: str, message: str) -> None:
        log.warning("pod cannot start: %s", message, extra={**self._fields, "reason": reason})
        with self._lock:
            for c in [*self.init, *self.main]:
                c.waiting(reason, message)
        self._publish()

    def _finish(self, phase: str, reason: str = "", message: str = "") -> None:
        if self.deleting:
            return
        if self.deadline_exceeded:
            reason, message = (
                "DeadlineExceeded",
                "Pod was active on the node longer than the specified deadline",
            )
        with self._lock:
            self.phase = phase
            self._reason, self._message = reason, message
            self.conditions.set("Ready", False, "PodCompleted")
            self.conditions.set("ContainersReady", False, "PodCompleted")
        log.info("pod finished", extra={**self._fields, "phase": phase, "reason": reason})
        self._publish(final=True)

    # -- one container ---------------------------------------------------------------------

    def _run_container(
        self, c: Obj, state: ContainerState, volumes: dict[str, Path], init: bool = False
    ) -> bool:
        """Runs a container until it is done for good; True when it finally exited 0."""
        policy = self.pod.get("spec", {}).get("restartPolicy", "Always")
        if init and policy == "Always":
            policy = "OnFailure"  # init containers never restart after success
        cdir = self.dir / "containers" / c["name"]
        cdir.mkdir(parents=True, exist_ok=True)
        backoff = self.cfg.restart_backoff_seconds
        if not self._pull(c, state):
            return False
        while not self.stopping.is_set():
            try:
                argv, env, cwd, term_file = self._container_process(c, volumes, cdir)
            except ConfigMissing as e:
                with self._lock:
                    state.waiting(e.reason, e.message)
                self._publish()
                if self.stopping.wait(2.0):
                    return False
                continue
            except PodSpecError as e:
                with self._lock:
                    state.terminated(128, e.reason, e.message, now(), now())
                self._publish()
                return False
            code, reason, message, started, finished = self._exec(
                c, state, argv, env, cwd, cdir, term_file, init
            )
            restart = (
                not self.stopping.is_set()
                and not self.deadline_exceeded
                and (policy == "Always" or (policy == "OnFailure" and code != 0))
            )
            with self._lock:
                term = state.terminated(code, reason, message, started, finished)
                if restart:
                    state.last_state = {"terminated": term}
                    state.restart_count += 1
                    state.waiting(
                        "CrashLoopBackOff",
                        f"back-off {backoff:g}s restarting failed container={c['name']} pod={self.name}",
                    )
            log.info(
                "container exited",
                extra={
                    **self._fields,
                    "container": c["name"],
                    "exit_code": code,
                    "reason": reason,
                    "restart": restart,
                },
            )
            if not restart:
                if not init:
                    # The pod keeps running while its other containers do; the final publish sets the phase.
                    self._publish()
                return code == 0
            self._publish()
            if self.stopping.wait(backoff):
                return False
            backoff = min(backoff * 2, self.cfg.restart_backoff_max_seconds)
        return False

    def _pull(self, c: Obj, state: ContainerState) -> bool:
        """A kubelet's image pull: images the node cannot map stay waiting, as a failed pull does.

        ErrImagePull, then ImagePullBackOff with a doubling delay, until the pod is deleted (a
        kubelet never gives up either; the Job's deadline or its owner decides).
        """
        image = c.get("image", "")
        if podspec.image_available(image, self.cfg.image_rules, self.cfg.local_images):
            return True
        message = podspec.pull_error_message(image)
        log.warning("image pull failed", extra={**self._fields, "container": c["name"], "image": image})
        backoff = self.cfg.restart_backoff_seconds
        while True:
            with self._lock:
                state.waiting("ErrImagePull", message)
            self._publish()
            if self.stopping.wait(min(1.0, backoff)):
                return False
            with self._lock:
                state.waiting("ImagePullBackOff", f'Back-off pulling image "{image}": {message}')
            self._publish()
            if self.stopping.wait(backoff):
                return False
            backoff = min(backoff * 2, self.cfg.restart_backoff_max_seconds)

    def _container_process(
        self, c: Obj, volumes: dict[str, Path], cdir: Path
    ) -> tuple[list[str], dict[str, str], Path, Path]:
        term_file = cdir / "termination-log"
        base = self._base_env()
        env = podspec.resolve_env(
            self.pod, c, self.lookup, base, {"cpu": self.cfg.cpu, "memory": self.cfg.memory}
        )
        mounts = podspec.plan_mounts(c, volumes, self.root, term_file, env)
        rewrites = mounts.rewrites if podspec.rewriting_enabled(self.pod) else podspec.Rewrites()
        env = {k: podspec.rewrite_paths(v, rewrites) for k, v in env.items()}
        env.update(mounts.env)
        env["PATH"] = _with_venv(env.get("PATH", ""), self.cfg.venv_bin)
        rule = podspec.match_rule(c.get("image", ""), self.cfg.image_rules)
        argv = [
            podspec.rewrite_paths(podspec.expand(a, env), rewrites) for a in podspec.container_argv(c, rule)
        ]
        cwd = podspec.working_dir(c, self.root, rewrites)
        argv = podspec.resolve_program(argv, env["PATH"], cwd)
        return argv, env, cwd, term_file

    def _base_env(self) -> dict[str, str]:
        env = {k: os.environ[k] for k in self.cfg.passthrough_env if k in os.environ}
        server = urlparse(self.client.server)
        env.update(
            {
                "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
                "HOSTNAME": self.name,
                "KUBERNETES_SERVICE_HOST": server.hostname or "127.0.0.1",
                "KUBERNETES_SERVICE_PORT": str(server.port or 443),
                "KUBERNETES_SERVICE_PORT_HTTPS": str(server.port or 443),
                "PITCREW_LOCALNODE": "1",
                "PITCREW_POD_DIR": str(self.dir),
                "PYTHONUNBUFFERED": "1",
            }
        )
        return env

    def _exec(
        self,
        c: Obj,
        state: ContainerState,
        argv: list[str],
        env: dict[str, str],
        cwd: Path,
        cdir: Path,
        term_file: Path,
        init: bool,
    ) -> tuple[int, str, str, str, str]:
        name = c["name"]
        log_path = cdir / "output.log"
        term_file.unlink(missing_ok=True)
        term_file.touch()
        with log_path.open("ab") as out:
            offset = out.tell()
            started = now()
            try:
                p = subprocess.Popen(
                    argv,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    cwd=cwd,
                    start_new_session=True,
                )
            except OSError as e:
                out.write(f"localnode: cannot start {argv[0]}: {e}\n".encode())
                return 128, "StartError", str(e), started, now()
        with self._lock:
            self._procs[name] = p
            if self.stopping.is_set():  # deletion raced with the start
                self._killed.add(name)
                _signal_group(p, signal.SIGKILL)
            state.running(started, p.pid)
        (cdir / "pid").write_text(f"{p.pid} {start_ticks(p.pid) or 0}\n")
        log.info("container started", extra={**self._fields, "container": name, "pid": p.pid, "argv": argv})
        if not init:
            with self._lock:
                self.phase = "Running"
                ready = all(s.is_running for s in self.main)
                self.conditions.set("ContainersReady", ready, "" if ready else "ContainersNotReady")
                self.conditions.set("Ready", ready, "" if ready else "ContainersNotReady")
        self._publish()
        while True:
            try:
                p.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if (
                    self._deadline is not None
                    and time.monotonic() > self._deadline
                    and not self.deadline_exceeded
                ):
                    self.deadline_exceeded = True
                    log.info("activeDeadlineSeconds exceeded", extra=self._fields)
                    threading.Thread(target=self.terminate, args=(self._grace(),), daemon=True).start()
        finished = now()
        (cdir / "pid").unlink(missing_ok=True)
        with self._lock:
            self._procs.pop(name, None)
            killed_by_us = name in self._killed
        code = p.returncode if p.returncode >= 0 else 128 - p.returncode
        if code == 0:
            reason = "Completed"
        elif p.returncode == -signal.SIGKILL and not killed_by_us:
            # Nobody here sent it; on a real node that is the kernel's OOM killer.
            reason = "OOMKilled"
        else:
            reason = "Error"
        message = _read_message(term_file)
        policy = c.get("terminationMessagePolicy", "File")
        if not message and code != 0 and policy == "FallbackToLogsOnError":
            message = _log_tail(log_path, offset)
        with self._lock:
            ready = all(s.is_running for s in self.main)
            self.conditions.set("ContainersReady", ready, "" if ready else "ContainersNotReady")
            self.conditions.set("Ready", ready, "" if ready else "ContainersNotReady")
        return code, reason, message, started, finished

    def _grace(self) -> float:
        return float(self.pod.get("spec", {}).get("terminationGracePeriodSeconds", 30))

    # -- status ----------------------------------------------------------------------------

    def _publish(self, final: bool = False) -> None:
        with self._lock:
            status = pod_status(
                self.phase,
                self.start_time,
                self.conditions,
                self.init,
                self.main,
                reason=self._reason,
                message=self._message,
            )
            # A terminal status must get through; intermediate ones may be superseded.
            attempts = 30 if final else 3
            for i in range(attempts):
                try:
                    self.client.patch(
                        f"/api/v1/namespaces/{self.namespace}/pods/{self.name}/status",
                        {"metadata": {"uid": self.uid}, "status": status},
                        STRATEGIC_PATCH,
                    )
                    return
                except ApiError as e:
                    if e.status in (404, 409, 422):  # gone, or replaced by a pod of the same name
                        log.info("pod status not written: %s", e, extra=self._fields)
                        return
                    log.warning("pod status write failed: %s", e, extra=self._fields)
                except Exception as e:
                    log.warning("pod status write failed: %s", e, extra=self._fields)
                time.sleep(min(0.2 * (i + 1), 2))

    def remove_dir(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _with_venv(path: str, venv_bin: str) -> str:
    parts = [p for p in path.split(os.pathsep) if p]
    if venv_bin and (not parts or parts[0] != venv_bin):
        parts.insert(0, venv_bin)
    return os.pathsep.join(parts)


def _signal_group(p: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(p.pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(sig)


def _read_message(path: Path) -> str:
    try:
        with path.open("rb") as f:
            return f.read(TERMINATION_MESSAGE_MAX).decode("utf-8", "replace")
    except OSError:
        return ""


def _log_tail(path: Path, offset: int) -> str:
    """This attempt's last log lines, as the kubelet's FallbackToLogsOnError reports them."""
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(offset, size - 64 * 1024))
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    text = "\n".join(data.splitlines()[-FALLBACK_LOG_LINES:])
    return text[-FALLBACK_LOG_BYTES:]
