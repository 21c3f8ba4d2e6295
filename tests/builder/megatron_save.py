"""Save a tiny model with Megatron-core's own code and record Megatron's own logits.

Runs in ``.venv-megatron`` (megatron-core 0.19 needs Python >= 3.12; ``make megatron-venv``), one
process per rank over gloo (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set by the launcher in
megatron_real.py). The model is built from a pretrain_gpt-style command line through Megatron's
``parse_and_validate_args`` and saved with ``megatron.training.checkpointing.save_checkpoint`` in
each requested format, i.e. exactly what a training run writes:

    megatron_save.py OUT TP PP MODEL[,MODEL...]

writes, for each model of MODELS, ``OUT/<model>/<format>/`` (the ``--save`` directory of the legacy
``torch`` and the ``torch_dist`` format) and, from the last pipeline stage's first tensor-parallel
rank, ``OUT/<model>/logits.pt`` = {"ids": [1, S], "logits": [1, S, vocab]}. Importing Megatron
takes most of a run, so one run (per parallel layout) saves every model.

Only CPU patches are applied (no GPU here), never to what Megatron computes or saves; see
/work/shared/reference/megatron-core-on-cpu.md for why each is needed.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
import zlib

os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "1")
warnings.filterwarnings("ignore")

import torch  # noqa: E402

# ---- CPU patches --------------------------------------------------------------------------------
torch.cuda.current_device = lambda: "cpu"  # type: ignore[assignment,return-value]
torch.cuda.synchronize = lambda *a, **k: None  # type: ignore[assignment]
torch.cuda.get_rng_state = lambda *a, **k: torch.zeros(8, dtype=torch.uint8)  # type: ignore[assignment]
torch.cuda.set_rng_state = lambda *a, **k: None  # type: ignore[assignment]
torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]

from megatron.core import num_microbatches_calculator, parallel_state, tensor_parallel  # noqa: E402
from megatron.core.models.gpt import GPTModel  # noqa: E402
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec  # noqa: E402

tensor_parallel.get_cuda_rng_tracker().fork = lambda *a, **k: contextlib.nullcontext()  # type: ignore[method-assign]
import megatron.core.datasets.utils as _ds_utils  # noqa: E402

_ds_utils.compile_helpers = lambda: None
import megatron.training.arguments as _arguments  # noqa: E402

_arguments.get_device_arch_version = lambda: 9  # type: ignore[attr-defined]
from megatron.training import global_vars  # noqa: E402
from megatron.training.argument_utils import core_transformer_config_from_args  # noqa: E402
from megatron.training.arguments import parse_and_validate_args  # noqa: E402
from megatron.training.checkpointing import save_checkpoint  # noqa: E402

MODELS = {
    # GPT: LayerNorm, learned positions, GELU with biases, tied embeddings (Megatron's defaults).
    "gpt": ["--ffn-hidden-size", "256"],
    # LLaMA-style: GQA, SwiGLU, RMSNorm, rotary, no biases, untied output layer.
    "llama": [
        "--ffn-hidden-size",
        "96",
        "--group-query-attention",
        "--num-query-groups",
        "2",
        "--swiglu",
        "--normalization",
        "RMSNorm",
        "--norm-epsilon",
        "1e-6",
        "--position-embedding-type",
        "rope",
        "--disable-bias-linear",
        "--untie-embeddings-and-output-weights",
    ],
}
# LLaMA-style with linearly interpolated rotary positions (positions divided by the factor).
MODELS["llama_interp"] = [*MODELS["llama"], "--rotary-seq-len-interpolation-factor", "2"]
# GPT without the fused bias-GELU: Megatron then computes the erf GELU, not the tanh form.
MODELS["gpt_erf"] = [*MODELS["gpt"], "--no-bias-gelu-fusion"]  # fmt: skip
VOCAB = 101
IDS = [[5, 17, 99, 3, 42, 64, 7, 88, 23]]


def _argv(model: str, tp: int, pp: int, save: str) -> list[str]:
    return [
        "pretrain_gpt.py",
        "--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
        "--seq-length", "32", "--max-position-embeddings", "32",
        "--micro-batch-size", "1", "--global-batch-size", "1",
        "--tensor-model-parallel-size", str(tp), "--pipeline-model-parallel-size", str(pp),
        "--tokenizer-type", "NullTokenizer", "--vocab-size", str(VOCAB),
        "--make-vocab-size-divisible-by", "8",
        "--transformer-impl", "local", "--use-cpu-initialization", "--no-gradient-accumulation-fusion",
        "--no-masked-softmax-fusion", "--no-persist-layer-norm", "--no-bias-dropout-fusion",
        "--no-rope-fusion", "--attention-dropout", "0", "--hidden-dropout", "0",
        "--lr", "1e-4", "--train-iters", "10", "--save", save, "--save-interval", "10",
        "--seed", "1234", "--init-method-std", "0.1",
        *MODELS[model],
    ]  # fmt: skip


def _randomise(model: torch.nn.Module, tp_rank: int, pp_rank: int) -> None:
    """Norm weights start at 1 and biases at 0: make them random so mapping mistakes show.

    Replicated parameters get the same values on every TP rank, sharded ones differ per rank.
    Stages number their layers from 0: the stage is in the seed so that each layer differs.
    """
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not ("norm" in name or name.endswith("bias")):
                continue
            sharded = bool(getattr(p, "tensor_model_parallel", False))
            seed = zlib.crc32(name.encode()) + (1000 * tp_rank if sharded else 0) + 100_000 * pp_rank
            g = torch.Generator().manual_seed(seed)
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


def save_model(out: str, model_name: str, tp: int, pp: int) -> None:
    sys.argv = _argv(model_name, tp, pp, os.path.join(out, "unused"))
    global_vars.destroy_global_vars()
    num_microbatches_calculator.destroy_num_microbatches_calculator()
    args = parse_and_validate_args()
    torch.manual_seed(args.seed)
    first = parallel_state.is_pipeline_first_stage()
    last = parallel_state.is_pipeline_last_stage()
    config = core_transformer_config_from_args(args)
    model = GPTModel(
        config=config,
        transformer_layer_spec=get_gpt_layer_local_spec(normalization=args.normalization),
        vocab_size=args.padded_vocab_size,
        max_sequence_length=args.max_position_embeddings,
        pre_process=first,
        post_process=last,
        parallel_output=False,
        share_embeddings_and_output_weights=not args.untie_embeddings_and_output_weights,
        position_embedding_type=args.position_embedding_type,
        rotary_percent=args.rotary_percent,
        rotary_base=args.rotary_base,
        rope_scaling=args.use_rope_scaling,
        rope_scaling_factor=args.rope_scaling_factor,
        seq_len_interpolation_factor=args.rotary_seq_len_interpolation_factor,
    )
    _randomise(
        model,
        parallel_state.get_tensor_model_parallel_rank(),
        parallel_state.get_pipeline_model_parallel_rank(),
    )
    if model.share_embeddings_and_output_weights and pp > 1:
        # Megatron copies the first stage's embedding to the last stage's output layer.
        weight = model.shared_embedding_or_output_weight()
        torch.distributed.all_reduce(weight.data, group=parallel_state.get_embedding_group())
    model.eval()

    ids = torch.tensor(IDS)
    pos = torch.arange(ids.shape[1]).unsqueeze(0)
    mask = torch.triu(torch.ones(ids.shape[1], ids.shape[1], dtype=torch.bool), 1)[None, None]
    rank = torch.distributed.get_rank()
    with torch.no_grad():
        if not first:  # pipeline: receive the previous stage's hidden state (Megatron's schedules need CUDA)
            hidden = torch.empty(ids.shape[1], 1, args.hidden_size)
            torch.distributed.recv(hidden, src=rank - tp)
            model.set_input_tensor(hidden)
        result = model(ids, pos, mask)
        if not last:
            torch.distributed.send(result.contiguous(), dst=rank + tp)
        elif parallel_state.get_tensor_model_parallel_rank() == 0:
            path = os.path.join(out, model_name, "logits.pt")
            torch.save({"ids": ids, "logits": result.float()[..., :VOCAB]}, path)

    for fmt in ("torch", "torch_dist"):
        args.save = os.path.join(out, model_name, fmt)
        args.ckpt_format = fmt
        args.use_dist_ckpt = fmt != "torch"
        save_checkpoint(10, [model], None, None, 0)
        torch.distributed.barrier()


def main() -> None:
    out, tp, pp, models = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4].split(",")
    torch.distributed.init_process_group("gloo")
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
    for name in models:
        os.makedirs(os.path.join(out, name), exist_ok=True)
        save_model(out, name, tp, pp)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
