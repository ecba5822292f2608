"""The tokenizer of a model: the checkpoint's own (Hugging Face), or for presets and folders
without one a byte-level tokenizer, so dummy-weight runs need no download."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Protocol

from solidx.runtime.config import Config

logger = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


class Tokenizer(Protocol):
    eos_token_id: int | None

    def encode(self, text: str) -> list[int]: ...

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as tokens: byte ``b`` is token ``OFFSET + b``; the BOS token (when the model
    has one) starts every prompt. Ids that are no byte decode as U+FFFD."""

    OFFSET = 3

    def __init__(self, vocab_size: int, bos_token_id: int | None, eos_token_id: int | None) -> None:
        if vocab_size < self.OFFSET + 256:
            raise ValueError(
                f"the byte tokenizer needs a vocabulary of at least {self.OFFSET + 256} "
                f"tokens, the model has {vocab_size}: give the model a tokenizer"
            )
        self.vocab_size = vocab_size
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id

    def encode(self, text: str) -> list[int]:
        bos = [self.bos_token_id] if self.bos_token_id is not None else []
        return bos + [self.OFFSET + b for b in text.encode("utf-8")]

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        special = {self.bos_token_id, self.eos_token_id}
        data = bytearray()
        for token in token_ids:
            if skip_special_tokens and token in special:
                continue
            if self.OFFSET <= token < self.OFFSET + 256:
                data.append(token - self.OFFSET)
            else:
                data.extend("\ufffd".encode("utf-8"))
        return data.decode("utf-8", errors="replace")


def get_tokenizer(config: Config) -> Tokenizer:
    source = config.tokenizer or (None if config.is_preset else config.model)
    if source is not None and (config.tokenizer or _has_tokenizer(Path(source))):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(source)
    if not config.is_preset:
        logger.warning("%s has no tokenizer files: using the byte-level tokenizer", config.model)
    hf = config.hf_config
    return ByteTokenizer(
        int(hf["vocab_size"]), _first(hf.get("bos_token_id")), _first(hf.get("eos_token_id"))
    )


def eos_token_ids(config: Config, tokenizer: Tokenizer) -> frozenset[int]:
    """Every token that ends generation: the tokenizer's EOS, config.json's and
    generation_config.json's ``eos_token_id`` (an id or a list)."""
    ids: set[int] = set()
    sources: list[Any] = [
        getattr(tokenizer, "eos_token_id", None),
        config.hf_config.get("eos_token_id"),
    ]
    generation_config = Path(config.model) / "generation_config.json"
    if not config.is_preset and generation_config.is_file():
        sources.append(json.loads(generation_config.read_text()).get("eos_token_id"))
    for value in sources:
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list):
            ids.update(v for v in value if isinstance(v, int))
    return frozenset(ids)


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in TOKENIZER_FILES)


def _first(value: Any) -> int | None:
    if isinstance(value, list):
        return value[0] if value else None
    return value
