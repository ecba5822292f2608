"""``LLM``: the offline inference entry point, as in vLLM."""

from __future__ import annotations

from typing import Any, Union

from solidx.runtime.config import Config
from solidx.runtime.engine import LLMEngine
from solidx.runtime.executor import RayExecutor
from solidx.runtime.outputs import RequestOutput
from solidx.runtime.sampling_params import SamplingParams

Prompt = Union[str, dict[str, Any]]


class LLM:
    """``LLM(model, **config)``: ``model`` is a Hugging Face checkpoint folder or a preset name
    (with ``load_format="dummy"``); the keywords are the fields of ``runtime.config.Config``.

    With ``tensor_parallel_size=N`` every one of the N ranks (torchrun processes) makes the same
    calls and builds the same engine; each rank's ``generate`` returns the same outputs, as in
    vLLM under torchrun (print them on rank 0 only: ``int(os.environ.get("RANK", 0)) == 0``).
    With ``distributed_executor_backend="ray"`` the ranks are Ray actors and this process holds
    no engine (no ``llm_engine``): ``generate`` hands the prompts to them.
    """

    def __init__(self, model: str, **kwargs: Any) -> None:
        config = Config(model=model, **kwargs)
        self._engine: LLMEngine | None = None
        if config.distributed_executor_backend == "ray":
            self.ray_executor = RayExecutor(config)
            return
        self._engine = LLMEngine(config)

    @property
    def llm_engine(self) -> LLMEngine:
        if self._engine is None:
            raise RuntimeError(
                "with distributed_executor_backend='ray' the engines live in the Ray actors and "
                "only generate() reaches them; run under torchrun to use the engine directly"
            )
        return self._engine

    def get_tokenizer(self) -> Any:
        if self._engine is None:
            return self.ray_executor.tokenizer
        return self._engine.tokenizer

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
        inputs = [_prompt_input(p) for p in prompts]  # a bad prompt fails here, on no rank
        runner = self._engine if self._engine is not None else self.ray_executor
        return runner.generate(inputs, params, use_tqdm)


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
