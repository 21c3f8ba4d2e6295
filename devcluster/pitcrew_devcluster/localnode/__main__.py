"""`python -m pitcrew_devcluster.localnode --config FILE`: run the local node until SIGTERM."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from .. import logs
from ..kubeapi import KubeClient
from . import logserver
from .agent import PodAgent
from .config import LocalNodeConfig
from .node import NodeAgent

log = logging.getLogger("pitcrew_devcluster.localnode")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pitcrew_devcluster.localnode", description=__doc__)
    parser.add_argument("--config", type=Path, required=True, help="JSON config (devcluster up writes one)")
    parser.add_argument("--verbose", "-v", action="store_true")
    args = parser.parse_args(argv)
    logs.setup(logging.DEBUG if args.verbose else logging.INFO, structured=True)

    cfg = LocalNodeConfig.load(args.config)
    cfg.work_dir.mkdir(parents=True, exist_ok=True)
    client = KubeClient.from_kubeconfig(cfg.kubeconfig)
    node = NodeAgent(client, cfg)
    pods = PodAgent(client, cfg)

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("stopping on signal", extra={"signal": signal.Signals(signum).name})
        stop.set()
        node.halt()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    logserver.serve(cfg)
    # Watch pods before registering, so no pod bound right after the node turns Ready is missed.
    watcher = threading.Thread(target=pods.run, name="pod-watch", daemon=True)
    watcher.start()
    node.register()
    if not stop.is_set():
        node.start_heartbeats()
    log.info("localnode running", extra={"node": cfg.node_name, "work_dir": str(cfg.work_dir)})
    stop.wait()
    pods.stop()
    node.stop()
    log.info("localnode stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
