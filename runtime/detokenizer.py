"""Incremental detokenization: a sequence's output text as its tokens arrive, each step decoding
a short window of tokens rather than the whole output again.

Each update decodes the window (the tokens from ``_start`` on); its text past the characters
already emitted is new. Up to ``HOLD`` trailing U+FFFD characters are held back: they may be a
UTF-8 character that the next tokens complete (one U+FFFD for an incomplete byte sequence,
one per byte for byte-fallback tokens). Once the window is longer than ``MAX_WINDOW`` tokens
it restarts ``CONTEXT_TOKENS`` before the end if the restarted window's text is the end of the
old one's (so the characters not emitted yet line up); else it tries again at the next update.

``text`` is thus what ``tokenizer.decode`` of the output so far gives, less the held-back end,
for tokenizers whose decoding of a token depends on no more than ``CONTEXT_TOKENS`` tokens
before it: byte-level BPE, SentencePiece (byte fallback too) and the byte tokenizer; the tests
check it on multi-byte text. (Hugging Face's ``clean_up_tokenization_spaces``, applied for
WordPiece tokenizers only, can join text across the emitted end: there the final text, always
a whole decode, may differ from the streamed pieces around " ." or " 's".)
"""

from __future__ import annotations

from collections.abc import Callable

from solidx.runtime.tokenizer import Tokenizer

CONTEXT_TOKENS = 4
MAX_WINDOW = 12
HOLD = 3  # U+FFFD characters a UTF-8 character not complete yet may show as
REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """The text of ``token_ids[first:]`` for one growing list of token ids (a sequence's prompt
    then its output: ``first`` is where the output starts)."""

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool, first: int = 0) -> None:
        self._decode = _window_decoder(tokenizer, skip_special_tokens)
        self.text = ""
        self._start = first  # the window's first token
        self._emitted = 0  # characters of the window's text already in self.text

    def update(self, token_ids: list[int]) -> str:
        """Read the tokens appended to ``token_ids`` since the last update; return the text they
        add to ``text`` ("" while it is held back)."""
        end = len(token_ids)
        window = self._decode(token_ids[self._start:])
        stable = len(window) - _trailing_replacements(window)
        delta = window[self._emitted:stable] if stable > self._emitted else ""
        self.text += delta
        self._emitted += len(delta)
        if end - self._start > MAX_WINDOW:
            self._restart(token_ids, window)
        return delta

    def _restart(self, token_ids: list[int], window: str) -> None:
        start = len(token_ids) - CONTEXT_TOKENS
        restarted = self._decode(token_ids[start:])
        pending = len(window) - self._emitted
        if len(restarted) >= pending and window.endswith(restarted):
            self._start, self._emitted = start, len(restarted) - pending


def _window_decoder(tokenizer: Tokenizer, skip_special_tokens: bool) -> Callable[[list[int]], str]:
    """``tokenizer.decode`` of a window, through the Rust tokenizer of a Hugging Face fast
    tokenizer when that gives the same text (no clean-up of spaces), which skips the Python
    wrapper's cost of microseconds per call."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and not getattr(tokenizer, "clean_up_tokenization_spaces", True):
        return lambda ids: backend.decode(ids, skip_special_tokens=skip_special_tokens)
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)


def _trailing_replacements(text: str) -> int:
    """How many of the last ``HOLD`` characters of ``text`` are a run of U+FFFD at its end."""
    count = 0
    while count < HOLD and count < len(text) and text[-1 - count] == REPLACEMENT:
        count += 1
    return count
