"""Engine sizes resolved the way Megatron's TRTLLMEngineBuilder and TRT-LLM's check_max_num_tokens do.

Pure: the controller uses it to normalise the cache key (two specs that build the same engine get the
same key), the builder to fill BuildConfig.
"""

from __future__ import annotations

from dataclasses import dataclass

from pitcrew.api.v1alpha1 import BuildOptions

# Megatron leaves context FMHA at TRT-LLM's default: on.
CONTEXT_FMHA = True

# TRT-LLM warns above this many tokens per batch; we keep the value and say so in the build log.
LARGE_NUM_TOKENS = 16384


@dataclass(frozen=True)
class ResolvedSizes:
    max_input_len: int
    max_seq_len: int
    max_batch_size: int
    max_beam_width: int
    max_num_tokens: int
    opt_num_tokens: int | None
    warnings: tuple[str, ...] = ()


def resolve_sizes(
    *,
    max_input_len: int,
    max_output_len: int,
    max_seq_len: int | None,
    max_batch_size: int,
    max_beam_width: int,
    max_num_tokens: int | None,
    opt_num_tokens: int | None,
    remove_input_padding: bool,
    context_fmha: bool,
    tokens_per_block: int,
    multiple_profiles: bool,
) -> ResolvedSizes:
    """max_seq_len defaults to input + output; then TRT-LLM's check_max_num_tokens, step for step.

    Follows tensorrt_llm/_common.py:check_max_num_tokens (TensorRT-LLM 1.2.x), in its order: the
    default opt_num_tokens is taken from the user's (or product) max_num_tokens *before* that is
    raised to tokens_per_block, so batch 64, maxNumTokens 32, tokensPerBlock 128 gives (128, 32).
    One deliberate difference: with padded inputs and no sizes given TRT-LLM returns
    max_num_tokens None; we return max_batch_size * max_seq_len, which is what a padded engine's
    inputs hold (prepare_inputs reads neither value then) and what BuildConfig's int field accepts.
    """
    seq_len = max_seq_len if max_seq_len is not None else max_input_len + max_output_len
    warnings: list[str] = []
    product = max_batch_size * seq_len
    if not remove_input_padding:
        # Padded inputs: every sequence occupies max_seq_len slots. TRT-LLM returns opt as given.
        if max_num_tokens is not None and max_num_tokens != product:
            warnings.append(
                f"maxNumTokens {max_num_tokens} ignored without removeInputPadding; using {product}"
            )
        return ResolvedSizes(
            max_input_len=max_input_len,
            max_seq_len=seq_len,
            max_batch_size=max_batch_size,
            max_beam_width=max_beam_width,
            max_num_tokens=product,
            opt_num_tokens=opt_num_tokens,
            warnings=tuple(warnings),
        )
    num_tokens = product if max_num_tokens is None else max_num_tokens
    opt = opt_num_tokens
    if opt is None and not multiple_profiles:
        opt = min(max_batch_size * max_beam_width, num_tokens)
    if num_tokens > LARGE_NUM_TOKENS:
        warnings.append(f"maxNumTokens {num_tokens} is above {LARGE_NUM_TOKENS}: large activation memory")
    num_tokens = min(num_tokens, product)
    if num_tokens < max_input_len and not context_fmha:
        num_tokens = max_input_len
    elif num_tokens < tokens_per_block and context_fmha:
        num_tokens = tokens_per_block
    if opt is not None and opt > num_tokens:
        opt = num_tokens
    return ResolvedSizes(
        max_input_len=max_input_len,
        max_seq_len=seq_len,
        max_batch_size=max_batch_size,
        max_beam_width=max_beam_width,
        max_num_tokens=num_tokens,
        opt_num_tokens=opt,
        warnings=tuple(warnings),
    )


def sizes_for(build: BuildOptions) -> ResolvedSizes:
    """The sizes of an EngineBuild's build options (context FMHA on, as Megatron builds)."""
    return resolve_sizes(
        max_input_len=build.max_input_len,
        max_output_len=build.max_output_len,
        max_seq_len=build.max_seq_len,
        max_batch_size=build.max_batch_size,
        max_beam_width=build.max_beam_width,
        max_num_tokens=build.max_num_tokens,
        opt_num_tokens=build.opt_num_tokens,
        remove_input_padding=build.remove_input_padding,
        context_fmha=CONTEXT_FMHA,
        tokens_per_block=build.tokens_per_block,
        multiple_profiles=build.multiple_profiles,
    )
