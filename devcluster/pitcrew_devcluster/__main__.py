"""`python -m pitcrew_devcluster up|down|env|status` (also installed as `pitcrew-devcluster`)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from . import binaries, cluster
from .errors import DevclusterError
from .state import default_state_dir


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pitcrew_devcluster",
        description="Local Kubernetes control plane + S3 + a real node (kubelet + containerd) for tests.",
    )
    state_help = (
        "where state, logs and kubeconfig live (default: $PITCREW_STATE_DIR or .pitcrew/devcluster "
        "in the checkout)"
    )
    p.add_argument("--state-dir", type=Path, default=None, help=state_help)
    # Also accepted after the subcommand; SUPPRESS keeps a missing one from hiding the top-level one.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", type=Path, default=argparse.SUPPRESS, help=state_help)
    sub = p.add_subparsers(dest="cmd", required=True)

    u = sub.add_parser("up", parents=[common], help="start everything; refused if already running")
    d = cluster.UpOptions()
    u.add_argument(
        "--node",
        choices=cluster.NODE_KINDS,
        default=d.node,
        help="real: kubelet + containerd + runc (root, Debian packages from hack/install-node-deps.sh)",
    )
    u.add_argument("--node-name", default=d.node_name)
    u.add_argument("--gpus", type=int, default=d.gpus, help="nvidia.com/gpu capacity of the node")
    u.add_argument("--gpu-product", default=d.gpu_product, help="nvidia.com/gpu.product label")
    u.add_argument("--compute-capability", default=d.compute_capability, help="e.g. 8.0, 8.9, 9.0")
    u.add_argument("--node-cpu", default=d.node_cpu, help="cpu capacity the kwok nodes advertise")
    u.add_argument("--node-memory", default=d.node_memory, help="memory capacity the kwok nodes advertise")
    u.add_argument("--bucket", default=d.bucket)
    u.add_argument("--no-s3", action="store_true", help="do not start MinIO")
    u.add_argument("--kwok-nodes", type=int, default=0, help="also start kwok with N fake GPU nodes")
    u.add_argument("--apiserver-port", type=int, default=None, help="fixed port (default: a free one)")
    u.add_argument("--s3-port", type=int, default=None, help="fixed port (default: a free one)")
    u.add_argument("--timeout", type=float, default=d.timeout, help="seconds to wait for each phase")
    u.add_argument("--no-build", action="store_true", help="fail instead of building missing binaries")
    u.add_argument(
        "--build-tools",
        type=Path,
        default=None,
        help="hack/build-tools.sh of the checkout (default: $PITCREW_BUILD_TOOLS or ./hack/build-tools.sh)",
    )
    u.add_argument(
        "--image",
        type=Path,
        action="append",
        default=[],
        metavar="ARCHIVE",
        help="import this OCI image archive into the node's containerd; repeatable",
    )

    dn = sub.add_parser(
        "down", parents=[common], help="stop everything (process groups); keeps logs and S3 data"
    )
    dn.add_argument("--purge", action="store_true", help="also delete the state dir's contents")

    k = sub.add_parser(
        "kwok", parents=[common], help="add N kwok fake GPU nodes to the running cluster (starts kwok)"
    )
    k.add_argument("count", type=int)
    k.add_argument("--gpus", type=int, default=d.gpus)
    k.add_argument("--gpu-product", default=d.gpu_product)
    k.add_argument("--compute-capability", default=d.compute_capability)

    li = sub.add_parser(
        "load-image", parents=[common], help="import OCI image archives into the running real node"
    )
    li.add_argument("archives", type=Path, nargs="+", help="e.g. from hack/build-images.sh")

    e = sub.add_parser("env", parents=[common], help="print shell exports for the running cluster")
    e.add_argument("--json", action="store_true")

    s = sub.add_parser("status", parents=[common], help="components, pids, readiness")
    s.add_argument("--json", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    state_dir: Path = (args.state_dir or default_state_dir()).resolve()
    try:
        if args.cmd == "up":
            info = cluster.up(
                cluster.UpOptions(
                    state_dir=state_dir,
                    node=args.node,
                    node_name=args.node_name,
                    gpus=args.gpus,
                    gpu_product=args.gpu_product,
                    compute_capability=args.compute_capability,
                    node_cpu=args.node_cpu,
                    node_memory=args.node_memory,
                    s3=not args.no_s3,
                    bucket=args.bucket,
                    kwok_nodes=args.kwok_nodes,
                    apiserver_port=args.apiserver_port,
                    s3_port=args.s3_port,
                    timeout=args.timeout,
                    build=not args.no_build,
                    build_tools=(args.build_tools or binaries.default_build_tools()).resolve(),
                    images=args.image,
                )
            )
            print(
                f'# devcluster is up; to use it:\n#   eval "$(python -m pitcrew_devcluster --state-dir '
                f'{shlex.quote(str(state_dir))} env)"\n#   kubectl get nodes'
            )
            _print_env(info.env())
        elif args.cmd == "down":
            cluster.down(state_dir, purge=args.purge)
        elif args.cmd == "kwok":
            names = cluster.start_kwok(
                args.count,
                state_dir,
                gpus=args.gpus,
                gpu_product=args.gpu_product,
                compute_capability=args.compute_capability,
            )
            print("\n".join(names))
        elif args.cmd == "load-image":
            for name in cluster.load_images(args.archives, state_dir):
                print(name)
        elif args.cmd == "env":
            loaded = cluster.load(state_dir)
            if loaded is None:
                raise DevclusterError(
                    f"no devcluster is running in {state_dir}; start one with "
                    f"`python -m pitcrew_devcluster up`"
                )
            if args.json:
                print(json.dumps(loaded.env(), indent=2))
            else:
                _print_env(loaded.env())
        elif args.cmd == "status":
            st = cluster.status(state_dir)
            if args.json:
                print(json.dumps(st, indent=2))
            else:
                print(f"state dir: {st['state_dir']}  running: {st['running']}")
                for c in st["components"]:
                    alive = "alive" if c["alive"] else "DEAD"
                    print(f"  {c['name']:<24} pid {c['pid']:<8} {alive:<6} {c['log']}")
                for key in ("server", "apiserver_ready", "node_ready", "s3_live", "error"):
                    if key in st:
                        print(f"  {key}: {st[key]}")
            return 0 if st["running"] else 3
    except DevclusterError as e:
        print(f"devcluster: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("devcluster: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `status | head`
        return 0
    return 0


def _print_env(env: dict[str, str]) -> None:
    for k, v in env.items():
        print(f"export {k}={shlex.quote(v)}")


if __name__ == "__main__":
    sys.exit(main())
