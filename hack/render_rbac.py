#!/usr/bin/env python3
"""Renders the chart's RBAC templates to plain YAML without helm (helm may not be installed).

`python hack/render_rbac.py [RELEASE] [NAMESPACE]` prints the ServiceAccount, ClusterRole and
ClusterRoleBinding; the tests apply this output and run the operator under its token.
Only `{{ .Release.Name }}` and `{{ .Release.Namespace }}` are substituted, and the
`rbac.namespaced` guard is resolved to its default (false: cluster-wide, one ClusterRole); the
RBAC templates use nothing else (no other template syntax may be left). The namespaced mode
(role.yaml) is rendered by the real helm in tests/helm/test_chart_namespaced.py.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

CHART = Path(__file__).resolve().parents[1] / "helm" / "pitcrew"
RBAC_TEMPLATES = ("serviceaccount.yaml", "clusterrole.yaml", "clusterrolebinding.yaml")


def render(release: str = "pitcrew", namespace: str = "pitcrew-system") -> str:
    docs = []
    for name in RBAC_TEMPLATES:
        text = (CHART / "templates" / name).read_text()
        text = re.sub(r"\{\{\s*\.Release\.Name\s*\}\}", release, text)
        text = re.sub(r"\{\{\s*\.Release\.Namespace\s*\}\}", namespace, text)
        # rbac.namespaced defaults to false: the guarded (namespaced) rules stay in the ClusterRole.
        text = re.sub(r"(?m)^\{\{-? if not \.Values\.rbac\.namespaced -?\}\}\n", "", text)
        text = re.sub(r"(?m)^\{\{-? end -?\}\}\n", "", text)
        if "{{" in text:
            raise SystemExit(f"{name}: template syntax this renderer does not support is left")
        docs.append(text.strip())
    return "\n---\n".join(docs) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render(*sys.argv[1:3]))
