"""Instruction tokenizers: byte-level (default, nothing to download) or a Hugging Face tokenizer from disk.

Both map a list of strings to ``(ids (B, max_len) int64, mask (B, max_len) bool)``, padded on the right.
An instruction longer than ``max_len`` tokens is an error (never silently truncated): raise
``backbone.max_text_len`` instead.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor


class ByteTokenizer:
    """UTF-8 bytes shifted by 2; id 0 = padding, id 1 = beginning of text."""

    PAD, BOS, OFFSET = 0, 1, 2
    vocab_size = 256 + OFFSET

    def __init__(self, max_len: int) -> None:
        self.max_len = int(max_len)

    def encode(self, text: str) -> list[int]:
        return [self.BOS] + [b + self.OFFSET for b in text.encode("utf-8")]

    def __call__(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        return _pad([self.encode(t) for t in texts], texts, self.max_len, self.PAD)


class HFTokenizer:
    """A Hugging Face tokenizer loaded from a local directory (``AutoTokenizer.from_pretrained(path)``)."""

    def __init__(self, path: str, max_len: int) -> None:
        from transformers import AutoTokenizer

        if not Path(path).is_dir():
            raise FileNotFoundError(
                f"backbone.tokenizer = {path!r} is neither 'byte' nor an existing directory with a "
                "Hugging Face tokenizer (save one with tokenizer.save_pretrained(dir))"
            )
        self.tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.max_len = int(max_len)
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        self.vocab_size = len(self.tok)

    def __call__(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        ids = [self.tok(t, add_special_tokens=True)["input_ids"] for t in texts]
        return _pad(ids, texts, self.max_len, self.pad_id)


def _pad(ids: list[list[int]], texts: list[str], max_len: int, pad_id: int) -> tuple[Tensor, Tensor]:
    out = torch.full((len(ids), max_len), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), max_len), dtype=torch.bool)
    for i, seq in enumerate(ids):
        if len(seq) > max_len:
            raise ValueError(
                f"instruction {texts[i][:60]!r}... has {len(seq)} tokens, more than "
                f"backbone.max_text_len = {max_len}; raise backbone.max_text_len in the model config"
            )
        out[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[i, : len(seq)] = True
    return out, mask


def build_tokenizer(spec: str, max_len: int) -> ByteTokenizer | HFTokenizer:
    """``spec`` = "byte" or a local tokenizer directory (``backbone.tokenizer``)."""
    return ByteTokenizer(max_len) if spec == "byte" else HFTokenizer(spec, max_len)
