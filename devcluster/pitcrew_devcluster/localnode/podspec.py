"""Turning a pod's container spec into a local process: program, environment, volumes, paths.

Everything here is a pure function of the pod dict (plus lookups of ConfigMaps, Secrets and
tokens passed in), so it is unit-tested without a cluster.

Mount paths. A process cannot see `/etc/pitcrew/spec.yaml` when the volume lives in the pod's
directory, so for every volumeMount (and the terminationMessagePath) the node:

1. creates `<pod>/root/<mountPath>` as a symlink to the volume's directory (the container's view),
2. sets `PITCREW_VOLUME_<VOLUME_NAME>` to the volume's local directory (name upper-cased, other
   characters as `_`), plus `PITCREW_POD_ROOT` and `PITCREW_TERMINATION_LOG`,
3. rewrites occurrences of the mountPath in command, args, env values and workingDir to the local
   directory: `/data/out` and `--out=/data` change, `/database` does not (the path must start a
   token: line start, whitespace, quote, `=`, `:` or `,`, and end at `/` or such a delimiter).
   Parents of mount paths (`/mnt/pvc` for a mount at `/mnt/pvc/engines`) are rewritten to their
   directory under `root/` only as whole tokens, never as prefixes of other paths.
   The pod annotation `pitcrew.dev/localnode-rewrite-paths: "false"` turns rewriting off.
"""

from __future__ import annotations

import base64
import fnmatch
import math
import os
import re
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

Obj = dict[str, Any]

REWRITE_ANNOTATION = "pitcrew.dev/localnode-rewrite-paths"
DEFAULT_TERMINATION_PATH = "/dev/termination-log"
LOCAL_IP = "127.0.0.1"


class PodSpecError(Exception):
    """A container cannot start; `reason` is the kubelet's waiting reason for it."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        self.message = message
        super().__init__(f"{reason}: {message}")


class ConfigMissing(PodSpecError):
    """A referenced ConfigMap/Secret/key is missing; the kubelet retries these until they appear."""

    def __init__(self, message: str) -> None:
        super().__init__("CreateContainerConfigError", message)


class Lookup(Protocol):
    def configmap(self, namespace: str, name: str) -> Obj | None: ...
    def secret(self, namespace: str, name: str) -> Obj | None: ...
    def service_account_token(
        self, namespace: str, service_account: str, audience: str | None, expiration_seconds: int
    ) -> str: ...


# ---------------------------------------------------------------------------------------------
# Program


@dataclass(frozen=True)
class ImageRule:
    """Maps images starting with `prefix` to a local program, like an image's ENTRYPOINT and CMD."""

    prefix: str
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None

    def matches(self, image: str) -> bool:
        return image.startswith(self.prefix)


def match_rule(image: str, rules: list[ImageRule]) -> ImageRule | None:
    return next((r for r in rules if r.matches(image)), None)


def image_available(image: str, rules: list[ImageRule], local_images: Iterable[str]) -> bool:
    """Whether the node "has" the image: an image rule maps it, or it matches a locally available
    pattern (fnmatch, e.g. `python:*`). Anything else is what a kubelet could not pull."""
    if match_rule(image, rules) is not None:
        return True
    return any(fnmatch.fnmatchcase(image, pattern) for pattern in local_images)


def pull_error_message(image: str) -> str:
    return (
        f'failed to pull image "{image}": the local node has no local mapping for it '
        "(no image rule matches and it is not in local_images)"
    )


def container_argv(container: Obj, rule: ImageRule | None) -> list[str]:
    """Docker semantics: `command` replaces the ENTRYPOINT, `args` replaces the CMD."""
    command: list[str] | None = container.get("command")
    args: list[str] | None = container.get("args")
    if command:
        return [*command, *(args or [])]
    entry = list(rule.entrypoint or []) if rule else []
    tail = list(args) if args is not None else list(rule.cmd or []) if rule else []
    argv = [*entry, *tail]
    if not argv:
        raise PodSpecError(
            "RunContainerError",
            f"image {container.get('image')!r} has no local program (no image rule with an entrypoint) "
            f"and container {container.get('name')!r} sets no command",
        )
    return argv


def resolve_program(argv: list[str], path: str, cwd: Path) -> list[str]:
    """argv with argv[0] resolved on the pod's PATH, as exec in a container would."""
    prog = argv[0]
    if "/" in prog:
        target = prog if os.path.isabs(prog) else str(cwd / prog)
        if not os.access(target, os.X_OK):
            raise PodSpecError("RunContainerError", f'exec: "{prog}": no such executable')
        return [target, *argv[1:]]
    found = shutil.which(prog, path=path)
    if found is None:
        raise PodSpecError("RunContainerError", f'exec: "{prog}": executable file not found in $PATH')
    return [found, *argv[1:]]


# ---------------------------------------------------------------------------------------------
# Environment

_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion: defined variables are replaced, `$$` escapes, others stay."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env.get(name, m.group(0))

    return _VAR.sub(sub, text)


_LABEL_REF = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


def field_ref(pod: Obj, path: str) -> str:
    meta = pod.get("metadata", {})
    spec = pod.get("spec", {})
    simple: dict[str, Any] = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.hostIP": LOCAL_IP,
        "status.hostIPs": LOCAL_IP,
        "status.podIP": LOCAL_IP,
        "status.podIPs": LOCAL_IP,
    }
    if path in simple:
        return str(simple[path] or "")
    m = _LABEL_REF.match(path)
    if m:
        return str(meta.get(m.group(1), {}).get(m.group(2), ""))
    if path in ("metadata.labels", "metadata.annotations"):
        items = meta.get(path.split(".")[1], {})
        return "\n".join(f'{k}="{v}"' for k, v in sorted(items.items()))
    raise PodSpecError("CreateContainerConfigError", f"unsupported fieldRef {path!r}")


_SUFFIX: dict[str, int | Decimal] = {
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
}


def parse_quantity(q: str | int | float) -> Decimal:
    """A Kubernetes resource quantity ("500m", "2Gi", "1e3") as a number."""
    s = str(q).strip()
    m = re.fullmatch(r"([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?", s)
    if not m:
        raise ValueError(f"bad quantity {q!r}")
    return Decimal(m.group(1)) * Decimal(_SUFFIX[m.group(2) or ""])


def resource_field_ref(container: Obj, ref: Obj, node_allocatable: dict[str, str]) -> str:
    """Like the downward API: the limit (or request) divided by the divisor, rounded up."""
    resource: str = ref["resource"]
    kind, _, name = resource.partition(".")
    resources = container.get("resources", {})
    value = resources.get(kind, {}).get(name)
    if value is None and kind == "limits":
        value = node_allocatable.get(name, "0")  # an unset limit reads as the node's allocatable
    if value is None:
        value = "0"
    divisor = parse_quantity(ref.get("divisor", "1") or "1")
    return str(math.ceil(parse_quantity(value) / divisor))


def _key_ref(kind: str, ns: str, ref: Obj, get: Callable[[str, str], Obj | None]) -> str | None:
    obj = get(ns, ref["name"])
    optional = bool(ref.get("optional", False))
    if obj is None:
        if optional:
            return None
        raise ConfigMissing(f'{kind} "{ref["name"]}" not found')
    key = ref["key"]
    if key in (obj.get("data") or {}):
        raw = obj["data"][key]
        return base64.b64decode(raw).decode() if kind == "secret" else str(raw)
    if kind == "configmap" and key in (obj.get("binaryData") or {}):
        return base64.b64decode(obj["binaryData"][key]).decode(errors="replace")
    if optional:
        return None
    raise ConfigMissing(f"couldn't find key {key} in {kind.title()} {ns}/{ref['name']}")


def resolve_env(
    pod: Obj,
    container: Obj,
    lookup: Lookup,
    base: dict[str, str],
    node_allocatable: dict[str, str] | None = None,
) -> dict[str, str]:
    """The container's environment: `base`, then envFrom, then env (later wins), `$(VAR)` expanded."""
    ns = pod["metadata"]["namespace"]
    env = dict(base)
    for src in container.get("envFrom") or []:
        prefix = src.get("prefix", "")
        if "configMapRef" in src:
            ref = src["configMapRef"]
            obj = lookup.configmap(ns, ref["name"])
            if obj is None:
                if ref.get("optional"):
                    continue
                raise ConfigMissing(f'configmap "{ref["name"]}" not found')
            for k, v in (obj.get("data") or {}).items():
                env[prefix + k] = str(v)
        elif "secretRef" in src:
            ref = src["secretRef"]
            obj = lookup.secret(ns, ref["name"])
            if obj is None:
                if ref.get("optional"):
                    continue
                raise ConfigMissing(f'secret "{ref["name"]}" not found')
            for k, v in (obj.get("data") or {}).items():
                env[prefix + k] = base64.b64decode(v).decode()
    for var in container.get("env") or []:
        name = var["name"]
        if "valueFrom" not in var:
            env[name] = expand(str(var.get("value", "")), env)
            continue
        vf = var["valueFrom"]
        value: str | None
        if "configMapKeyRef" in vf:
            value = _key_ref("configmap", ns, vf["configMapKeyRef"], lookup.configmap)
        elif "secretKeyRef" in vf:
            value = _key_ref("secret", ns, vf["secretKeyRef"], lookup.secret)
        elif "fieldRef" in vf:
            value = field_ref(pod, vf["fieldRef"]["fieldPath"])
        elif "resourceFieldRef" in vf:
            value = resource_field_ref(container, vf["resourceFieldRef"], node_allocatable or {})
        else:
            raise PodSpecError("CreateContainerConfigError", f"unsupported valueFrom in env {name}")
        if value is not None:
            env[name] = value
    return env


# ---------------------------------------------------------------------------------------------
# Volumes


def volume_env_name(volume: str) -> str:
    return "PITCREW_VOLUME_" + re.sub(r"[^A-Z0-9]", "_", volume.upper())


def _write_files(target: Path, files: dict[str, bytes], mode: int) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        if rel.startswith("/") or ".." in Path(rel).parts:
            raise PodSpecError("CreateContainerConfigError", f"invalid volume item path {rel!r}")
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(mode & 0o777)


def _keyed_files(kind: str, ns: str, src: Obj, lookup: Lookup) -> dict[str, bytes]:
    """Files of a configMap/secret volume (or projection): all keys, or the listed items."""
    name = src.get("name", "")
    obj = lookup.configmap(ns, name) if kind == "configmap" else lookup.secret(ns, name)
    if obj is None:
        if src.get("optional"):
            return {}
        raise ConfigMissing(f'{kind} "{name}" not found')
    data: dict[str, bytes] = {}
    for k, v in (obj.get("data") or {}).items():
        data[k] = base64.b64decode(v) if kind == "secret" else str(v).encode()
    for k, v in (obj.get("binaryData") or {}).items():
        data[k] = base64.b64decode(v)
    items = src.get("items")
    if not items:
        return data
    out = {}
    for item in items:
        if item["key"] not in data:
            if src.get("optional"):
                continue
            raise ConfigMissing(f"couldn't find key {item['key']} in {kind} {ns}/{name}")
        out[item["path"]] = data[item["key"]]
    return out


def _downward_files(pod: Obj, src: Obj) -> dict[str, bytes]:
    return {
        item["path"]: field_ref(pod, item["fieldRef"]["fieldPath"]).encode()
        for item in src.get("items", [])
        if "fieldRef" in item
    }


def materialize_volumes(pod: Obj, pod_dir: Path, lookup: Lookup, pvc_dir: Path) -> dict[str, Path]:
    """Creates every volume of the pod locally; returns volume name -> local directory."""
    ns = pod["metadata"]["namespace"]
    out: dict[str, Path] = {}
    for vol in pod.get("spec", {}).get("volumes") or []:
        name = vol["name"]
        local = pod_dir / "volumes" / name
        source = next((v for k, v in vol.items() if k != "name"), None)
        mode = int(source.get("defaultMode") or 0o644) if isinstance(source, dict) else 0o644
        if "emptyDir" in vol:
            local.mkdir(parents=True, exist_ok=True)
        elif "configMap" in vol:
            _write_files(local, _keyed_files("configmap", ns, vol["configMap"], lookup), mode)
        elif "secret" in vol:
            src = {**vol["secret"], "name": vol["secret"].get("secretName", "")}
            _write_files(local, _keyed_files("secret", ns, src, lookup), mode)
        elif "downwardAPI" in vol:
            _write_files(local, _downward_files(pod, vol["downwardAPI"]), mode)
        elif "projected" in vol:
            files: dict[str, bytes] = {}
            for src in vol["projected"].get("sources") or []:
                if "configMap" in src:
                    files.update(_keyed_files("configmap", ns, src["configMap"], lookup))
                elif "secret" in src:
                    files.update(_keyed_files("secret", ns, src["secret"], lookup))
                elif "downwardAPI" in src:
                    files.update(_downward_files(pod, src["downwardAPI"]))
                elif "serviceAccountToken" in src:
                    sat = src["serviceAccountToken"]
                    token = lookup.service_account_token(
                        ns,
                        pod["spec"].get("serviceAccountName", "default"),
                        sat.get("audience"),
                        int(sat.get("expirationSeconds", 3607)),
                    )
                    files[sat["path"]] = token.encode()
            _write_files(local, files, mode)
        elif "hostPath" in vol:
            # The node is this host, so a hostPath is simply that path.
            local = Path(vol["hostPath"]["path"])
            if vol["hostPath"].get("type") in ("DirectoryOrCreate", "", None):
                local.mkdir(parents=True, exist_ok=True)
        elif "persistentVolumeClaim" in vol:
            # Claims are shared directories per namespace and claim name, surviving the pod.
            local = pvc_dir / ns / vol["persistentVolumeClaim"]["claimName"]
            local.mkdir(parents=True, exist_ok=True)
        else:
            kind = next((k for k in vol if k != "name"), "?")
            raise PodSpecError("CreateContainerConfigError", f"volume {name}: type {kind} is not supported")
        out[name] = local
    return out


@dataclass(frozen=True)
class Rewrites:
    """Container path -> local path. Paths in `exact_only` (parents of mounts, such as /mnt/pvc
    for a mount at /mnt/pvc/engines) are rewritten only as whole tokens, never as a prefix, so a
    mount at /etc/pitcrew does not redirect /etc/ssl/certs."""

    pairs: tuple[tuple[str, str], ...] = ()
    exact_only: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.pairs)


@dataclass(frozen=True)
class Mounts:
    """Where a container's paths live locally."""

    rewrites: Rewrites
    env: dict[str, str]


def plan_mounts(
    container: Obj, volumes: dict[str, Path], root: Path, termination_file: Path, env: dict[str, str]
) -> Mounts:
    """Creates `root/<mountPath>` symlinks and returns the path rewrites and PITCREW_* variables."""
    pairs: dict[str, str] = {}
    extra: dict[str, str] = {}
    for m in container.get("volumeMounts") or []:
        vol = m["name"]
        if vol not in volumes:
            raise PodSpecError("CreateContainerConfigError", f"volumeMount {vol} names no volume of the pod")
        local = volumes[vol]
        sub = m.get("subPath") or (expand(m["subPathExpr"], env) if m.get("subPathExpr") else "")
        if sub:
            local = local / sub
            if not local.exists():
                local.mkdir(parents=True, exist_ok=True)
        mount_path = "/" + m["mountPath"].strip("/")
        pairs[mount_path] = str(local)
        extra.setdefault(volume_env_name(vol), str(volumes[vol]))
        link = root / mount_path.lstrip("/")
        if not link.is_symlink() and not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(local)
    parents: dict[str, str] = {}
    for mount_path in pairs:
        parent = os.path.dirname(mount_path)
        while parent not in ("/", "") and parent not in pairs:
            parents[parent] = str(root / parent.lstrip("/"))
            parent = os.path.dirname(parent)
    term_path = container.get("terminationMessagePath") or DEFAULT_TERMINATION_PATH
    pairs[term_path] = str(termination_file)
    extra["PITCREW_TERMINATION_LOG"] = str(termination_file)
    extra["PITCREW_POD_ROOT"] = str(root)
    ordered = sorted({**parents, **pairs}.items(), key=lambda kv: len(kv[0]), reverse=True)
    return Mounts(rewrites=Rewrites(tuple(ordered), frozenset(parents)), env=extra)


_DELIM_BEFORE = "\\s=:,'\"("
_DELIM_AFTER = "\\s:,'\")"


def rewrite_paths(text: str, rewrites: Rewrites) -> str:
    """Replaces container paths that start a token (see the module docstring) by local paths."""
    if not rewrites or "/" not in text:
        return text
    alternatives = "|".join(re.escape(src) for src, _ in rewrites.pairs)  # longest first
    pattern = re.compile(f"(?<![^{_DELIM_BEFORE}])({alternatives})(?=/|$|[{_DELIM_AFTER}])")
    table = dict(rewrites.pairs)

    def sub(m: re.Match[str]) -> str:
        src = m.group(1)
        if src in rewrites.exact_only and text.startswith("/", m.end()):
            return src
        return table[src]

    return pattern.sub(sub, text)


def working_dir(container: Obj, root: Path, rewrites: Rewrites) -> Path:
    wd = container.get("workingDir")
    if not wd:
        return root
    rewritten = rewrite_paths(wd, rewrites)
    local = Path(rewritten) if rewritten != wd else root / wd.lstrip("/")
    local.mkdir(parents=True, exist_ok=True)
    return local


def rewriting_enabled(pod: Obj) -> bool:
    ann = pod.get("metadata", {}).get("annotations") or {}
    return str(ann.get(REWRITE_ANNOTATION, "true")).lower() != "false"
