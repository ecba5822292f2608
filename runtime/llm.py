"""``LLM``: the offline inference entry point, as in vLLM."""

from __future__ import annotations

from typing import Any, Union

from tqdm import tqdm

from runtime.config import Config
from runtime.engine import LLMEngine
from runtime.outputs import RequestOutput
from runtime.sampling_params import SamplingParams

Prompt = Union[str, dict[str, Any]]


class LLM:
    """``LLM(model, **config)``: ``model`` is a Hugging Face checkpoint folder or a preset name
    (with ``load_format="dummy"``); the keywords are the fields of ``runtime.config.Config``."""

    def __init__(self, model: str, **kwargs: Any) -> None:
        self.llm_engine = LLMEngine(Config(model=model, **kwargs))

    def get_tokenizer(self) -> Any:
        return self.llm_engine.tokenizer

    def generate(
        self,
        prompts: Prompt | list[Prompt],
        sampling_params: SamplingParams | list[SamplingParams] | None = None,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        """Run every prompt to completion; outputs in the order of ``prompts``.

        A prompt is a string or ``{"prompt_token_ids": [...]}`` (or ``{"prompt": "..."}``).
        ``sampling_params`` is one for all prompts or one per prompt (default: vLLM's defaults).
        """
        prompts = [prompts] if isinstance(prompts, (str, dict)) else list(prompts)
        if sampling_params is None:
            sampling_params = SamplingParams()
        params = (
            sampling_params
            if isinstance(sampling_params, list)
            else [sampling_params] * len(prompts)
        )
        if len(params) != len(prompts):
            raise ValueError(f"{len(params)} sampling params for {len(prompts)} prompts")
        engine = self.llm_engine
        seqs = [engine.add_request(_prompt_input(p), sp) for p, sp in zip(prompts, params)]
        with tqdm(
            total=len(seqs), desc="generate", unit="req", disable=not use_tqdm or len(seqs) < 2
        ) as bar:
            while engine.has_unfinished_requests():
                bar.update(len(engine.step()))
        return [RequestOutput.from_seq(seq) for seq in seqs]


def _prompt_input(prompt: Prompt) -> str | list[int]:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, dict) and "prompt_token_ids" in prompt:
        return [int(t) for t in prompt["prompt_token_ids"]]
    if isinstance(prompt, dict) and isinstance(prompt.get("prompt"), str):
        return prompt["prompt"]
    raise ValueError(
        f"a prompt is a string or a dict with 'prompt_token_ids' or 'prompt', got {prompt!r}"
    )
