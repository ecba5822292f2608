"""Chat messages to a prompt: the tokenizer's own chat template, or ``--chat-template`` (a
Jinja file or inline template, rendered as Hugging Face renders one)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from solidx.runtime.serve.protocol import ApiError
from solidx.runtime.tokenizer import Tokenizer


def load_chat_template(value: str | None) -> str | None:
    """``--chat-template``: a path to a file, else the template text itself."""
    if value is None:
        return None
    path = Path(value)
    return path.read_text() if path.is_file() else value


class ChatPrompter:
    def __init__(self, tokenizer: Tokenizer, template: str | None) -> None:
        self.tokenizer = tokenizer
        self.template = template
        self.hf = hasattr(tokenizer, "apply_chat_template")
        self._compiled = None
        if template is not None:
            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            self._compiled = env.from_string(template)

    def token_ids(self, messages: list[dict[str, Any]]) -> list[int]:
        """The prompt's tokens; ApiError(400) when there is no template or it fails."""
        if self._compiled is not None:
            try:
                text = self._compiled.render(
                    messages=messages, add_generation_prompt=True,
                    bos_token=self._special("bos_token"), eos_token=self._special("eos_token"),
                )
            except TemplateError as exc:
                raise ApiError(400, f"the chat template failed: {exc}", "messages") from None
        elif self.hf and getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        else:
            raise ApiError(
                400, "the model's tokenizer has no chat template: start the server with "
                "--chat-template FILE", "messages",
            )
        if self.hf:
            return list(self.tokenizer.encode(text, add_special_tokens=False))
        return self.tokenizer.encode(text)

    def _special(self, name: str) -> str:
        value = getattr(self.tokenizer, name, None)
        return value if isinstance(value, str) else ""
