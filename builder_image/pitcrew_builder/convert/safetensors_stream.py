"""Write a safetensors file one tensor at a time.

The safetensors library only writes whole dicts, which would force us to hold a rank's entire
weights in memory. The format is simple (8-byte little-endian header length, JSON header with
byte offsets, raw data), and the checkpoint layout tells us every name and shape in advance,
so we write the header first and each tensor's bytes as soon as it is produced.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import torch

from pitcrew_builder.checkpoint import CheckpointError, Shape

_ST_DTYPES: dict[torch.dtype, str] = {
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float32: "F32",
    torch.float8_e4m3fn: "F8_E4M3",
}


class StreamingSafetensorsWriter:
    """Pre-declares ``layout`` (name -> shape) in ``dtype`` (or ``dtypes[name]``); ``write`` fills
    tensors in any order."""

    def __init__(
        self,
        path: Path,
        layout: dict[str, Shape],
        dtype: torch.dtype,
        dtypes: Mapping[str, torch.dtype] | None = None,
    ) -> None:
        self.path = path
        self.dtype = dtype
        self._shapes = dict(layout)
        self._dtypes = {name: (dtypes or {}).get(name, dtype) for name in layout}
        for d in {dtype, *self._dtypes.values()}:
            if d not in _ST_DTYPES:
                raise CheckpointError(f"dtype {d} cannot be written")
        self._offsets: dict[str, int] = {}
        header: dict[str, object] = {"__metadata__": {"format": "pt"}}
        pos = 0
        for name, shape in layout.items():
            nbytes = torch.empty((), dtype=self._dtypes[name]).element_size() * _numel(shape)
            header[name] = {
                "dtype": _ST_DTYPES[self._dtypes[name]],
                "shape": list(shape),
                "data_offsets": [pos, pos + nbytes],
            }
            self._offsets[name] = pos
            pos += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
        self._data_start = 8 + len(raw)
        self._total = self._data_start + pos
        self._pending = set(layout)
        self._file: BinaryIO | None = path.open("wb")
        self._file.write(struct.pack("<Q", len(raw)))
        self._file.write(raw)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if name not in self._shapes:
            raise CheckpointError(f"{self.path.name}: unexpected tensor {name}")
        if tuple(tensor.shape) != self._shapes[name]:
            raise CheckpointError(
                f"{self.path.name}: tensor {name} has shape {tuple(tensor.shape)}, "
                f"expected {self._shapes[name]}"
            )
        if name not in self._pending:
            raise CheckpointError(f"{self.path.name}: tensor {name} written twice")
        assert self._file is not None, "writer is closed"
        data = tensor.detach().to(device="cpu", dtype=self._dtypes[name]).contiguous()
        self._file.seek(self._data_start + self._offsets[name])
        # A uint8 view shares memory: no second copy of the tensor is made.
        self._file.write(data.view(torch.uint8).reshape(-1).numpy().data)
        self._pending.discard(name)

    def close(self) -> None:
        """Finish the file; raises if a declared tensor was never written."""
        if self._file is None:
            return
        self._file.close()
        self._file = None
        if self._pending:
            missing = sorted(self._pending)[0]
            self.path.unlink(missing_ok=True)
            raise CheckpointError(f"{self.path.name}: tensor {missing} was never written")
        if self.path.stat().st_size != self._total:
            raise CheckpointError(f"{self.path.name}: size mismatch after writing")

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> StreamingSafetensorsWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _numel(shape: Shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
