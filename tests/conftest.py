"""Fixtures shared by the whole suite: database URLs and a tiny random Llama model."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

POSTGRES_URL_VARIABLE = "SEQR_TEST_POSTGRES_URL"
DATASETS_DIR = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def postgres_url() -> str | None:
    return os.environ.get(POSTGRES_URL_VARIABLE) or None


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'registry.db'}"


@pytest.fixture
def postgres_database() -> Iterator[str]:
    """Create a fresh PostgreSQL database for one test and drop it afterwards.

    Fails, instead of skipping, when SEQR_TEST_POSTGRES_URL is set and the server is unreachable:
    CI must not go green without the PostgreSQL tests. Skips only when the variable is unset.
    """
    base = postgres_url()
    if base is None:
        pytest.skip(f"{POSTGRES_URL_VARIABLE} is not set; the PostgreSQL tests need a server")
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    name = f"seqr_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as error:  # noqa: BLE001 - any connection failure must fail the test loudly
        pytest.fail(f"PostgreSQL at {base} is unreachable or refused CREATE DATABASE: {error}")
    try:
        yield make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database URL: once SQLite, once PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    return request.getfixturevalue("postgres_database")


def make_tiny_llama(seed: int = 0):
    """Build a tiny random LlamaForCausalLM (2 layers, hidden size 64) in float32."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture
def tiny_llama():
    return make_tiny_llama()


def make_byte_tokenizer():
    """Build a real fast tokenizer with one token per byte (ids 0-255) and pad/bos/eos at 256-258."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {symbol: index for index, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for special in ("<|pad|>", "<|bos|>", "<|eos|>"):
        vocab[special] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<|pad|>", bos_token="<|bos|>", eos_token="<|eos|>"
    )


def make_tiny_model_dir(path: Path, seed: int = 0) -> Path:
    """Save a tiny random Llama with a byte tokenizer as a Hugging Face model directory."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=259,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        pad_token_id=256,
        bos_token_id=257,
        eos_token_id=258,
    )
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(path, safe_serialization=True)
    make_byte_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def make_model_dir():
    """The :func:`make_tiny_model_dir` factory, for tests that need a second, different model."""
    return make_tiny_model_dir


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama saved as a local Hugging Face model directory, shared by the session."""
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    if not DATASETS_DIR.is_dir():
        pytest.skip(f"shared datasets not found at {DATASETS_DIR}")
    return DATASETS_DIR
