"""Read Megatron-core weights as full (TP-merged) tensors, one name at a time.

Names are Megatron-core module names with global layer numbers, e.g.
``decoder.layers.3.self_attention.linear_qkv.weight``. Two on-disk layouts:

* legacy: ``mp_rank_{tp:02d}[_{pp:03d}]/model_optim_rng.pt`` per rank, loaded with
  ``mmap=True`` so only the pages of tensors actually read are touched; TP shards are merged on
  read and PP stages' local layer numbers mapped to global ones.
* torch_dist: a PyTorch distributed checkpoint (``.metadata`` + ``*.distcp``) whose tensors are
  already global; decoder layers are usually stacked under ``decoder.layers.<suffix>`` with a
  leading layer axis. Each read asks DCP for exactly one layer's slice, so only the storage
  chunks overlapping it are loaded (a chunk is loaded whole, then narrowed).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pitcrew_builder.checkpoint import CheckpointError
from pitcrew_builder.convert.torch_load import args_dict, bytesio_value, load_pt, load_pt_bytes

if TYPE_CHECKING:  # importing torch.distributed.checkpoint takes seconds: only torch_dist pays for it
    from torch.distributed.checkpoint.planner import ReadItem

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")
_RANK_DIR = re.compile(r"^mp_rank_(\d{2})(?:_(\d{3}))?$")


class MegatronReader:
    args: dict[str, Any]
    dir: Path
    saved_args: bool  # the checkpoint itself holds training args

    def get(self, name: str) -> torch.Tensor | None:
        """The full tensor ``name``, or None when the checkpoint has no such tensor."""
        raise NotImplementedError

    def extra_states(self, name: str) -> list[Any]:
        """Transformer Engine's ``<module>._extra_state`` values saved for ``name`` (one per TP rank
        that saved one; empty when none)."""
        return []

    def release(self) -> None:
        """Drop open files/mappings; called after each layer so converted tensors leave the RSS."""

    def close(self) -> None:
        """Release files."""
        self.release()


def _strip(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Model tensors only: drop TE's ``_extra_state`` and anything that is not a tensor."""
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor) and "_extra_state" not in k}


def _extras(state: dict[str, Any]) -> dict[str, Any]:
    """TE's ``_extra_state`` entries (FP8 meta), kept apart from the tensors."""
    return {k: v for k, v in state.items() if k.endswith("._extra_state")}


def _tp_merge(suffix: str, shards: list[torch.Tensor], swiglu: bool) -> torch.Tensor:
    """Join one parameter's TP shards according to how Megatron-core splits it."""
    if len(shards) == 1:
        return shards[0]
    kind = suffix.rsplit(".", 1)[-1]
    if "layer_norm" in suffix or "layernorm" in suffix or "position_embeddings" in suffix:
        return shards[0]  # replicated
    if suffix.endswith(("linear_proj.weight", "linear_fc2.weight")):
        return torch.cat(shards, dim=1)  # row-parallel
    if suffix.endswith(("linear_proj.bias", "linear_fc2.bias")):
        return shards[0]
    if suffix.endswith(("linear_fc1.weight", "linear_fc1.bias")) and swiglu:
        # Each rank holds [its activated half ; its gate half].
        halves = [torch.chunk(s, 2, dim=0) for s in shards]
        return torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=0)
    if kind in ("weight", "bias"):
        return torch.cat(shards, dim=0)  # column-parallel: qkv, fc1, word embeddings, output layer
    raise CheckpointError(f"do not know how to merge TP shards of {suffix}")


def _rank_dir(t: int, p: int, pp: int) -> str:
    """Megatron's name of a rank's directory (get_checkpoint_name): no pipeline suffix when pp == 1."""
    return f"mp_rank_{t:02d}" if pp == 1 else f"mp_rank_{t:02d}_{p:03d}"


class LegacyReader(MegatronReader):
    """``mp_rank_XX[_YYY]/model_optim_rng.pt`` files."""

    def __init__(self, ckpt_dir: Path) -> None:
        ranks: dict[tuple[int, int], Path] = {}
        for sub in ckpt_dir.iterdir():
            m = _RANK_DIR.match(sub.name)
            if m and sub.is_dir():
                files = sorted(sub.glob("*.pt"))
                if not files:
                    raise CheckpointError(f"{sub} holds no .pt file")
                ranks[(int(m.group(1)), int(m.group(2) or 0))] = files[0]
        if not ranks:
            raise CheckpointError(f"{ckpt_dir} has no mp_rank_* directories")
        # The saved args say how many ranks there must be: a missing one is named, not guessed around.
        # The first rank's file, loaded for them, is kept for the first stage instead of loaded again.
        first = min(ranks)
        self._loaded: dict[tuple[int, int], Any] = {first: load_pt(ranks[first])}
        self.args = self._args_of(self._loaded[first], ranks[first])
        found_tp, found_pp = max(t for t, _ in ranks) + 1, max(p for _, p in ranks) + 1
        self.tp = int(self.args.get("tensor_model_parallel_size") or found_tp)
        self.pp = int(self.args.get("pipeline_model_parallel_size") or found_pp)
        layout = f"tensor_model_parallel_size={self.tp}, pipeline_model_parallel_size={self.pp}"
        if found_tp > self.tp or found_pp > self.pp:
            extra = sorted(_rank_dir(t, p, self.pp) for t, p in ranks if t >= self.tp or p >= self.pp)
            raise CheckpointError(f"{ckpt_dir} has {', '.join(extra)} beyond the saved {layout}")
        missing = [
            _rank_dir(t, p, self.pp) for t in range(self.tp) for p in range(self.pp) if (t, p) not in ranks
        ]
        if missing:
            raise CheckpointError(
                f"{ckpt_dir} lacks {', '.join(missing)}: the checkpoint was saved with {layout}, "
                "so every rank's directory must be there"
            )
        self.files = ranks
        self.dir = ckpt_dir
        # Rank files are mmap'ed and only the current stage's stay open: pages of tensors already
        # converted are unmapped (released from the RSS) when ``release`` drops them.
        self._open: dict[int, list[dict[str, torch.Tensor]]] = {}
        self._extra: dict[int, list[dict[str, Any]]] = {}
        self.keys: list[set[str]] = []
        for p in range(self.pp):
            stage = self._stage(p)
            self.keys.append(set(stage[0]))
            self.release()
        # Global layer offset of each stage, from the layers each stage actually holds.
        self.offsets: list[int] = []
        total = 0
        for p in range(self.pp):
            self.offsets.append(total)
            total += len({int(m.group(1)) for k in self.keys[p] if (m := _LAYER.match(k))})
        self.num_layers = total
        self.saved_args = bool(self.args)
        self.swiglu = bool(self.args.get("swiglu", False))

    @staticmethod
    def _args_of(blob: Any, path: Path) -> dict[str, Any]:
        if isinstance(blob, dict) and blob.get("args") is not None:
            return args_dict(blob["args"], str(path))
        return {}

    def _stage(self, p: int) -> list[dict[str, torch.Tensor]]:
        """State dicts of every TP rank of pipeline stage ``p`` (mmap'ed: read on first touch)."""
        if p in self._open:
            return self._open[p]
        row, extras = [], []
        for t in range(self.tp):
            path = self.files[(t, p)]
            blob = self._loaded.pop((t, p)) if (t, p) in self._loaded else load_pt(path)
            if not isinstance(blob, dict):
                raise CheckpointError(f"{path} does not hold a dict")
            if "model" not in blob:
                if any(str(k).startswith("model0") for k in blob):
                    raise CheckpointError("virtual pipeline checkpoints ('model0', ...) are not supported")
                raise CheckpointError(f"{path} lacks the 'model' state dict")
            row.append(_strip(blob["model"]))
            extras.append(_extras(blob["model"]))
        self._open[p] = row
        self._extra[p] = extras
        return row

    def release(self) -> None:
        self._open.clear()
        self._extra.clear()

    def extra_states(self, name: str) -> list[Any]:
        m = _LAYER.match(name)
        if not m:
            return []
        layer, suffix = int(m.group(1)), m.group(2)
        for p in reversed(range(self.pp)):
            if layer >= self.offsets[p]:
                self._stage(p)
                key = f"decoder.layers.{layer - self.offsets[p]}.{suffix}"
                return [ex[key] for ex in self._extra[p] if key in ex]
        return []

    def _merge(self, p: int, key: str, suffix: str) -> torch.Tensor | None:
        if key not in self.keys[p]:
            return None
        shards = [sd.get(key) for sd in self._stage(p)]
        present = [s for s in shards if s is not None]
        if len(present) != len(shards):
            raise CheckpointError(f"tensor {key} is missing from some TP ranks of pipeline stage {p}")
        return _tp_merge(suffix, present, self.swiglu)

    def get(self, name: str) -> torch.Tensor | None:
        m = _LAYER.match(name)
        if m:
            layer, suffix = int(m.group(1)), m.group(2)
            for p in reversed(range(self.pp)):
                if layer >= self.offsets[p]:
                    return self._merge(p, f"decoder.layers.{layer - self.offsets[p]}.{suffix}", suffix)
            return None
        for p in range(self.pp):  # embeddings live on the first stage, the rest on the last
            t = self._merge(p, name, name)
            if t is not None:
                return t
        return None

    def close(self) -> None:
        self.release()


class _SliceSink:
    """The minimal LoadPlanner surface FileSystemReader.read_data uses: write into ``dest``."""

    def __init__(self, dest: torch.Tensor) -> None:
        self.dest = dest
        self.data: bytes | None = None

    def resolve_tensor(self, item: ReadItem) -> torch.Tensor:
        t = self.dest
        for dim, (off, length) in enumerate(zip(item.dest_offsets, item.lengths, strict=True)):
            t = t.narrow(dim, off, length)
        return t

    def commit_tensor(self, item: ReadItem, tensor: torch.Tensor) -> None:
        pass

    def load_bytes(self, item: ReadItem, value: Any) -> None:
        self.data = value.read()


class TorchDistReader(MegatronReader):
    """A Megatron ``torch_dist`` checkpoint directory, read on the CPU without a process group."""

    def __init__(self, ckpt_dir: Path, args: dict[str, Any] | None) -> None:
        from torch.distributed.checkpoint.filesystem import FileSystemReader
        from torch.distributed.checkpoint.metadata import BytesStorageMetadata, TensorStorageMetadata

        if not (ckpt_dir / ".metadata").is_file():
            raise CheckpointError(f"{ckpt_dir} has no .metadata (not a torch_dist checkpoint)")
        self.reader = FileSystemReader(str(ckpt_dir))
        self.metadata = self.reader.read_metadata()
        self.reader.set_up_storage_reader(self.metadata, is_coordinator=True)
        self.tensors = {
            k: v
            for k, v in self.metadata.state_dict_metadata.items()
            if isinstance(v, TensorStorageMetadata) and "_extra_state" not in k
        }
        # TE extra states are ShardedObject items "<name>._extra_state/shard_<offsets>_<shape>":
        # stacked layers give the layer number as the first offset. (base name, offset) -> item key.
        self.objects: dict[tuple[str, int], str] = {}
        for k, v in self.metadata.state_dict_metadata.items():
            base, _, shard = k.partition("/shard_")
            if isinstance(v, BytesStorageMetadata) and base.endswith("._extra_state"):
                offset = shard.split("_", 1)[0].split(".", 1)[0] if shard else "0"
                self.objects[(base, int(offset) if offset.isdigit() else 0)] = k
        self.dir = ckpt_dir
        self.args = self._saved_args()
        self.saved_args = bool(self.args)
        # Megatron may nest the model under "model." in some versions.
        self.prefix = "model." if any(k.startswith("model.decoder.") for k in self.tensors) else ""

    def _saved_args(self) -> dict[str, Any]:
        """Training args: ``common.pt`` (megatron-core <= 0.18) or the ``common_state`` item (0.19+)."""
        from torch.distributed.checkpoint.metadata import BytesStorageMetadata

        common = self.dir / "common.pt"
        if common.is_file():
            blob = load_pt(common, mmap=False)
            if isinstance(blob, dict) and blob.get("args") is not None:
                return args_dict(blob["args"], str(common))
        for key, md in self.metadata.state_dict_metadata.items():
            if key.split("/", 1)[0] == "common_state" and isinstance(md, BytesStorageMetadata):
                blob = load_pt_bytes(self._read_bytes(key), f"{self.dir} item {key}")
                if isinstance(blob, list) and blob:  # a ShardedObject saves a list of its shards
                    blob = blob[0]
                if isinstance(blob, dict) and blob.get("args") is not None:
                    return args_dict(blob["args"], f"{self.dir} item {key}")
        return {}

    def extra_states(self, name: str) -> list[Any]:
        key = self.objects.get((self.prefix + name, 0))
        m = _LAYER.match(name)
        if key is None and m:
            key = self.objects.get((f"{self.prefix}decoder.layers.{m.group(2)}", int(m.group(1))))
        if key is None:
            return []
        where = f"{self.dir} item {key}"
        blob = load_pt_bytes(self._read_bytes(key), where)
        # DCP's planner torch.saves the BytesIO megatron-core hands it, which holds torch.save([state]).
        inner = bytesio_value(blob)
        if inner is not None:
            blob = load_pt_bytes(inner, where) if inner else None
        return [blob]

    def _read_bytes(self, key: str) -> bytes:
        from torch.distributed.checkpoint.metadata import MetadataIndex
        from torch.distributed.checkpoint.planner import LoadItemType, LoadPlan, ReadItem

        index = MetadataIndex(key)
        item = ReadItem(
            type=LoadItemType.BYTE_IO,
            dest_index=index,
            dest_offsets=torch.Size([0]),
            storage_index=index,
            storage_offsets=torch.Size([0]),
            lengths=torch.Size([0]),
        )
        sink = _SliceSink(torch.empty(0))
        plan = self.reader.prepare_global_plan([self.reader.prepare_local_plan(LoadPlan([item]))])[0]
        self._run(plan, sink)
        if sink.data is None:
            raise CheckpointError(f"{self.dir}: item {key} could not be read")
        return sink.data

    def _run(self, plan: Any, sink: _SliceSink) -> None:
        """Execute a read plan; a shard named in .metadata but absent is named in the error."""
        for item in plan.items:
            info = self.metadata.storage_data.get(item.storage_index)
            if info is not None and not (self.dir / info.relative_path).is_file():
                raise CheckpointError(
                    f"{self.dir}: shard file {info.relative_path} (holding {item.storage_index.fqn}) "
                    "is missing"
                )
        try:
            self.reader.read_data(plan, sink).wait()  # type: ignore[arg-type]
        except (OSError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"{self.dir}: cannot read the .distcp files: {exc}") from exc

    def _read(self, key: str, layer: int | None) -> torch.Tensor:
        from torch.distributed.checkpoint.metadata import MetadataIndex
        from torch.distributed.checkpoint.planner import LoadItemType, LoadPlan, ReadItem

        md = self.tensors[key]
        size = list(md.size)
        start = [0] * len(size)
        if layer is not None:
            if layer >= size[0]:
                raise CheckpointError(f"tensor {key} has {size[0]} layers, layer {layer} was asked for")
            start[0], size[0] = layer, 1
        dest = torch.empty(size, dtype=md.properties.dtype)
        items = []
        for idx, chunk in enumerate(md.chunks):
            lo = [max(a, c) for a, c in zip(start, chunk.offsets, strict=True)]
            hi = [
                min(a + n, c + m) for a, n, c, m in zip(start, size, chunk.offsets, chunk.sizes, strict=True)
            ]
            if any(low >= high for low, high in zip(lo, hi, strict=True)):
                continue
            items.append(
                ReadItem(
                    type=LoadItemType.TENSOR,
                    dest_index=MetadataIndex(key, start),
                    dest_offsets=torch.Size(a - b for a, b in zip(lo, start, strict=True)),
                    storage_index=MetadataIndex(key, chunk.offsets, idx),
                    storage_offsets=torch.Size(a - b for a, b in zip(lo, chunk.offsets, strict=True)),
                    lengths=torch.Size(b - a for a, b in zip(lo, hi, strict=True)),
                )
            )
        plan = self.reader.prepare_global_plan([self.reader.prepare_local_plan(LoadPlan(items))])[0]
        self._run(plan, _SliceSink(dest))
        return dest[0] if layer is not None else dest

    def get(self, name: str) -> torch.Tensor | None:
        key = self.prefix + name
        if key in self.tensors:
            return self._read(key, None)
        m = _LAYER.match(name)
        if m:
            stacked = f"{self.prefix}decoder.layers.{m.group(2)}"
            if stacked in self.tensors:
                return self._read(stacked, int(m.group(1)))
        return None
