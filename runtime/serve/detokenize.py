"""Incremental detokenization for streaming: the new text of each step without decoding the
whole output again.

The tokens since the last emitted text are decoded together with the few before them (so a
word-initial space or a multi-byte character that spans tokens comes out right), and the text
of those few is cut off again. Text ending in U+FFFD (an incomplete character) is held back
for up to ``MAX_HOLD`` tokens, until a token completes it.
"""

from __future__ import annotations

from solidx.runtime.tokenizer import Tokenizer

CONTEXT_TOKENS = 4
MAX_HOLD = 4  # a UTF-8 character spans at most 4 byte tokens


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.text = ""
        self._read = 0  # tokens whose text is in self.text

    def update(self, token_ids: list[int]) -> str:
        """Given every output token so far, return the text they add to ``self.text``."""
        start = max(0, self._read - CONTEXT_TOKENS)
        before = self.tokenizer.decode(token_ids[start:self._read], skip_special_tokens=True)
        full = self.tokenizer.decode(token_ids[start:], skip_special_tokens=True)
        pending = len(token_ids) - self._read
        if not full.startswith(before) or (full.endswith("\ufffd") and pending < MAX_HOLD):
            return ""
        delta = full[len(before):]
        self._read = len(token_ids)
        self.text += delta
        return delta

    def finish(self, final_text: str) -> str:
        """The rest of the engine's final text (cut at a stop string) not yet emitted."""
        delta = final_text[len(self.text):] if final_text.startswith(self.text) else ""
        self.text += delta
        return delta
