"""Synthetic workloads: random prompts, and running the engine over decode batch sizes with the
shape recorder on (``solidx capture-shapes --run``), so the shapes file holds exactly the GEMM
problems the engine issues."""

from __future__ import annotations

from typing import Any

import torch

from solidx.gradlib.shapes_file import ShapeRow
from solidx.runtime.llm import LLM
from solidx.runtime.sampling_params import SamplingParams
from solidx.shape_capture.presets import PRESETS
from solidx.shape_capture.recorder import recording


def random_prompts(vocab_size: int, batch_size: int, input_len: int, seed: int = 0) -> list[dict]:
    """``batch_size`` prompts of ``input_len`` token ids drawn uniformly from the vocabulary."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (batch_size, input_len), generator=generator)
    return [{"prompt_token_ids": row.tolist()} for row in ids]


def with_dummy(model: str, engine_kwargs: dict[str, Any]) -> dict[str, Any]:
    """``engine_kwargs`` with ``load_format="dummy"`` for a preset whose load format is left
    ``auto`` (a preset has no weights to load); a copy, the argument is left as it was."""
    if model in PRESETS and engine_kwargs.get("load_format", "auto") == "auto":
        return {**engine_kwargs, "load_format": "dummy"}
    return dict(engine_kwargs)


def engine_for(model: str, max_batch: int, max_len: int, **engine_kwargs: Any) -> LLM:
    """An engine sized for batches up to ``max_batch`` of ``max_len`` tokens (dummy weights
    for a preset unless told otherwise)."""
    engine_kwargs = with_dummy(model, engine_kwargs)
    engine_kwargs.setdefault("max_model_len", max_len)
    engine_kwargs.setdefault("max_num_seqs", max_batch)
    return LLM(model, **engine_kwargs)


def capture_workload(
    model: str,
    batch_sizes: list[int],
    input_len: int,
    output_len: int,
    path: str | None = None,
    seed: int = 0,
    **engine_kwargs: Any,
) -> list[ShapeRow]:
    """For each batch size, generate ``output_len`` greedy tokens for that many random prompts of
    ``input_len`` tokens with the recorder on; merge the problems into ``path`` (when given) and
    return them. Prefill problems have N = the step's tokens (up to ``max_num_batched_tokens``),
    decode problems N = the batch size."""
    llm = engine_for(model, max(batch_sizes), input_len + output_len, seed=seed, **engine_kwargs)
    vocab = llm.llm_engine.model_runner.vocab_size
    params = SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True)
    with recording(path) as recorder:
        for batch in batch_sizes:
            llm.generate(random_prompts(vocab, batch, input_len, seed), params, use_tqdm=False)
        return recorder.rows()
