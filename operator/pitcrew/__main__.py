"""`python -m pitcrew`: runs the operator standalone (one replica, no peering).

Namespaces come from PITCREW_NAMESPACES (empty: cluster-wide). Equivalent to
`kopf run -m pitcrew.handlers --standalone --all-namespaces`.
"""

from __future__ import annotations

import sys

import kopf

from pitcrew.settings import Settings, SettingsError


def main() -> int:
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
