"""A word-level tokenizer for the tiny test models (their HF directories carry none)."""

from __future__ import annotations

from pathlib import Path

from pitcrew_builder.convert.calibration import builtin_lines


def save_word_tokenizer(path: Path, vocab_size: int) -> None:
    """tokenizer.json over the built-in calibration text, every id below ``vocab_size``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=["[UNK]"])
    tok.train_from_iterator(builtin_lines(), trainer)
    tok.save(str(path / "tokenizer.json"))
