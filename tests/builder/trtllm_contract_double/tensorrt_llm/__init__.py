"""CONTRACT DOUBLE of tensorrt_llm (see ../README.md): not the real package."""

from __future__ import annotations

from tensorrt_llm import models
from tensorrt_llm.commands.build import build

__version__ = "1.2.0"
IS_CONTRACT_DOUBLE = True

__all__ = ["__version__", "build", "models"]
