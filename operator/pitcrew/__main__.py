"""`python -m pitcrew`: runs the operator standalone (one replica, no peering).

Namespaces come from PITCREW_NAMESPACES (empty: cluster-wide). Equivalent to
`kopf run -m pitcrew.handlers --standalone --all-namespaces`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import kopf

from pitcrew.settings import ENV_VARS, Settings, SettingsError

SERVICE_ACCOUNT_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


def credentials_problem(env: dict[str, str], home: Path, token: Path = SERVICE_ACCOUNT_TOKEN) -> str | None:
    """Why kopf would not be able to log in, or None; kopf itself would retry every minute, forever."""
    if token.is_file():
        return None
    configs = [Path(p) for p in env.get("KUBECONFIG", "").split(os.pathsep) if p]
    if configs:
        missing = [str(p) for p in configs if not p.is_file()]
        return f"KUBECONFIG names files that do not exist: {', '.join(missing)}" if missing else None
    if (home / ".kube" / "config").is_file():
        return None
    return (
        "no Kubernetes credentials: run in a pod with a service account, or set KUBECONFIG "
        '(for the local cluster: eval "$(python -m pitcrew_devcluster env)")'
    )


def usage() -> str:
    rows = "\n".join(f"  {var.name:<38} {var.help} (default: {var.default!r})" for var in ENV_VARS)
    return f"{(__doc__ or '').strip()}\n\nSettings (environment variables):\n{rows}\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        print(usage())
        return 0
    if args:
        print(
            f"pitcrew: unexpected arguments {args}; configuration is by environment (see --help)",
            file=sys.stderr,
        )
        return 2
    problem = credentials_problem(dict(os.environ), Path.home())
    if problem:
        print(f"pitcrew: {problem}", file=sys.stderr)
        return 2
    try:
        settings = Settings.from_env()
    except SettingsError as e:
        print(f"pitcrew: bad setting: {e}", file=sys.stderr)
        return 2
    kopf.configure(log_format=kopf.LogFormat.JSON if settings.log_format == "json" else kopf.LogFormat.PLAIN)
    import pitcrew.handlers  # noqa: F401  (registers the handlers)

    kopf.run(
        standalone=True,
        clusterwide=not settings.namespaces,
        namespaces=list(settings.namespaces),
        liveness_endpoint=f"http://0.0.0.0:{settings.health_port}/healthz" if settings.health_port else None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
