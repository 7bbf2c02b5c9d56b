"""Fixtures for the training tests: a byte-level tokenizer and the tiny Llama as a BaseModel."""

from __future__ import annotations

import pytest

from seqr.training.base_model import BaseModel, weights_fingerprint
from seqr.training.library import Library, create_library


class ByteTokenizer:
    """Map each UTF-8 byte to one id (the tiny Llama's vocabulary has 256 ids); id 0 pads."""

    pad_token_id = 0
    eos_token = "\x00"
    pad_token = "\x00"

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": list(text.encode("utf-8"))}


@pytest.fixture
def tiny_base(tiny_llama) -> BaseModel:
    model = tiny_llama
    return BaseModel(model=model, tokenizer=ByteTokenizer(), name="tiny-llama", fingerprint=weights_fingerprint(model))


@pytest.fixture
def tiny_library(tiny_base: BaseModel) -> Library:
    return create_library(tiny_base.model, base_fingerprint=tiny_base.fingerprint, rank=4, alpha=8.0, seed=3)
