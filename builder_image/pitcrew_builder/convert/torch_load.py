"""Load Megatron ``.pt`` files without executing pickled code.

``torch.load(weights_only=True)`` refuses Megatron's ``args`` (an argparse Namespace that may hold
Megatron enums). Namespace itself is allowed; every other foreign class is replaced by an inert
stub that only records its arguments and state, so no code from the checkpoint ever runs and
Megatron need not be installed.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import Any

import torch

from pitcrew_builder.checkpoint import CheckpointError


class OpaqueObject:
    """Stands in for a pickled object of a class we do not import (e.g. a Megatron enum)."""

    qualname = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.kwargs = kwargs

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.state = state

    def __repr__(self) -> str:
        return f"<opaque {self.qualname}{self.args!r}>"


def bytesio_value(obj: Any) -> bytes | None:
    """The contents of an ``io.BytesIO`` as ``load_pt`` returns it (a stub), else None."""
    if isinstance(obj, OpaqueObject) and obj.qualname == "_io.BytesIO":
        state = getattr(obj, "state", None)
        if isinstance(state, tuple) and state and isinstance(state[0], bytes):
            return state[0]
        return b""
    return None


def stub_class(qualname: str) -> type[OpaqueObject]:
    """An inert stand-in for the class ``qualname`` (records what it is called with)."""
    return _stub(qualname)


def _stub(qualname: str) -> type[OpaqueObject]:
    return type("Opaque_" + qualname.replace(".", "_"), (OpaqueObject,), {"qualname": qualname})


def load_pt(path: Path, *, mmap: bool = True) -> Any:
    """``torch.load`` on the CPU with weights_only semantics and stubs for foreign classes."""
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        allowed: list[Any] = [argparse.Namespace]
        allowed += [(_stub(name), name) for name in unsafe if name != "argparse.Namespace"]
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", mmap=mmap, weights_only=True)
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"{path} cannot be loaded: {exc}") from exc


def load_pt_bytes(data: bytes, where: str) -> Any:
    """``load_pt`` for a torch.save blob held in memory (e.g. an item of a .distcp file)."""
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data))
        allowed: list[Any] = [argparse.Namespace]
        allowed += [(_stub(name), name) for name in unsafe if name != "argparse.Namespace"]
        with torch.serialization.safe_globals(allowed):
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{where} cannot be loaded: {exc}") from exc


def args_dict(args: Any, where: str) -> dict[str, Any]:
    """Megatron's saved ``args`` (Namespace, stub or dict) as a plain dict."""
    if args is None:
        raise CheckpointError(f"{where} holds no 'args'; pass them as ModelOverrides.megatron_args")
    if isinstance(args, dict):
        return dict(args)
    return {k: v for k, v in vars(args).items() if not k.startswith("_")}
