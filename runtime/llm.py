"""``LLM``: the offline inference entry point, as in vLLM."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Union

from solidx.runtime.config import Config
from solidx.runtime.engine import LLMEngine, check_params, prompt_input
from solidx.runtime.executor import RayExecutor
from solidx.runtime.outputs import RequestOutput
from solidx.runtime.sampling_params import SamplingParams

Prompt = Union[str, dict[str, Any]]
Conversation = list[dict[str, Any]]


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
        self.config = config
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
            list(sampling_params)
            if isinstance(sampling_params, (list, tuple))
            else [sampling_params] * len(prompts)
        )
        if len(params) != len(prompts):
            raise ValueError(f"{len(params)} sampling params for {len(prompts)} prompts")
        for i, sp in enumerate(params):  # a bad request fails here, on no rank
            if not isinstance(sp, SamplingParams):
                raise ValueError(
                    f"sampling_params[{i}] must be a SamplingParams, got {type(sp).__name__}"
                )
            check_params(sp, self.config)
        inputs = [prompt_input(p) for p in prompts]
        runner = self._engine if self._engine is not None else self.ray_executor
        return runner.generate(inputs, params, use_tqdm)

    def chat(
        self,
        messages: Conversation | list[Conversation],
        sampling_params: SamplingParams | list[SamplingParams] | None = None,
        use_tqdm: bool = True,
        chat_template: str | None = None,
        add_generation_prompt: bool = True,
    ) -> list[RequestOutput]:
        """``generate`` on each conversation (a list of ``{"role", "content"}`` messages, or a
        list of such lists) rendered by the tokenizer's chat template (or ``chat_template``)
        with the assistant's turn opened (``add_generation_prompt``), as vLLM's ``LLM.chat``."""
        conversations = (
            [messages] if messages and isinstance(messages[0], Mapping) else list(messages)
        )
        tokenizer = self.get_tokenizer()
        if not hasattr(tokenizer, "apply_chat_template"):
            raise ValueError(
                f"the tokenizer of {self.config.model} (byte-level: the model has no tokenizer "
                "files) has no chat template; give the model a tokenizer"
            )
        prompts: list[Prompt] = []
        for i, conversation in enumerate(conversations):
            if not isinstance(conversation, list) or not all(
                isinstance(m, Mapping) for m in conversation
            ):
                raise ValueError(f"messages[{i}] must be a list of message dicts")
            try:
                ids = tokenizer.apply_chat_template(
                    conversation,
                    chat_template=chat_template,
                    add_generation_prompt=add_generation_prompt,
                    tokenize=True,
                )
            except ValueError as exc:  # no template
                raise ValueError(f"chat: {exc}") from None
            if isinstance(ids, Mapping):
                ids = ids["input_ids"]
            prompts.append({"prompt_token_ids": list(ids)})
        return self.generate(prompts, sampling_params, use_tqdm)
