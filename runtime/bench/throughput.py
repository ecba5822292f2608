"""Throughput benchmark: many requests through the engine at once (continuous batching, CUDA
graphs unless ``enforce_eager``), as vLLM's ``benchmark_throughput``: random prompts of a fixed
length or of lengths drawn uniformly from a range, or given prompts; output lengths fixed or
drawn the same way; greedy; ``ignore_eos`` keeps every request to its output length.

With ``compare_hf``, Hugging Face transformers ``generate`` runs on the same model (the same dummy
architecture) in the same run, once per batch size: one static batch of the workload's first B
requests, left-padded, generating ``min(longest output, hf_max_new_tokens)`` tokens. Its tokens/s
counts each request's tokens up to its own output length over the batch's wall time. The best
batch size is the one compared. Capping the new tokens leaves out transformers' slowest,
longest-context steps, so the ratio it gives errs in transformers' favour.
"""

from __future__ import annotations

import gc
import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from solidx.gradlib.timing import Stopwatch
from solidx.runtime import attention
from solidx.runtime.bench.cpu_guard import warn_if_slow_on_cpu
from solidx.runtime.bench.hf import hf_generate_seconds, left_pad, load_hf_model
from solidx.runtime.bench.result import BenchResult, device_name, tuned_gemm_line
from solidx.runtime.bench.workload import engine_for, with_dummy
from solidx.runtime.config import Config
from solidx.runtime.layers.linear import tuned_gemms
from solidx.runtime.sampling_params import SamplingParams
from solidx.runtime.tokenizer import get_tokenizer
from solidx.shape_capture.presets import load_model_config

logger = logging.getLogger(__name__)

Lengths = int | tuple[int, int]
"""A fixed length, or an inclusive range ``(low, high)`` to draw lengths from uniformly."""

DEFAULT_MAX_NUM_SEQS = 256  # vLLM's


@dataclass(frozen=True)
class Request:
    prompt_token_ids: list[int]
    output_len: int


def draw_lengths(lengths: Lengths, count: int, generator: torch.Generator) -> list[int]:
    """``count`` lengths: all equal to an int, or uniform in an inclusive ``(low, high)``."""
    low, high = (lengths, lengths) if isinstance(lengths, int) else lengths
    if not 1 <= low <= high:
        raise ValueError(f"lengths must satisfy 1 <= low <= high, got {lengths}")
    return torch.randint(low, high + 1, (count,), generator=generator).tolist()


def random_requests(
    vocab_size: int, num_prompts: int, input_len: Lengths, output_len: Lengths, seed: int = 0
) -> list[Request]:
    """``num_prompts`` prompts of token ids drawn uniformly from the vocabulary."""
    if num_prompts < 1:
        raise ValueError(f"num_prompts must be >= 1, got {num_prompts}")
    generator = torch.Generator().manual_seed(seed)
    prompt_lens = draw_lengths(input_len, num_prompts, generator)
    output_lens = draw_lengths(output_len, num_prompts, generator)
    ids = torch.randint(0, vocab_size, (sum(prompt_lens),), generator=generator)
    return [Request(chunk.tolist(), out) for chunk, out in zip(ids.split(prompt_lens), output_lens)]


def given_requests(
    prompts: list[str | dict[str, Any]], tokenizer: Any, output_len: Lengths, seed: int = 0
) -> list[Request]:
    """Requests for given prompts (text, or ``{"prompt_token_ids": [...]}``)."""
    if not prompts:
        raise ValueError("no prompts given")
    output_lens = draw_lengths(output_len, len(prompts), torch.Generator().manual_seed(seed))
    requests = []
    for prompt, out in zip(prompts, output_lens):
        ids = (
            tokenizer.encode(prompt)
            if isinstance(prompt, str)
            else [int(t) for t in prompt["prompt_token_ids"]]
        )
        requests.append(Request(ids, out))
    return requests


@dataclass
class HfRun:
    """One static batch through transformers ``generate``: the first ``batch_size`` requests,
    ``new_tokens`` generated for each, ``output_tokens`` of them within the requests' lengths."""

    batch_size: int
    new_tokens: int
    output_tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.seconds


@dataclass
class ThroughputResult(BenchResult):
    """Token counts are sums over the requests; rates are over ``elapsed_s``, the wall time of
    the whole workload through the engine. ``tuned_gemm``: as in ``LatencyResult``."""

    model: str
    device: str
    dtype: str
    cuda_graphs: bool
    num_prompts: int
    ignore_eos: bool
    prompt_tokens: int
    output_tokens: int
    elapsed_s: float
    num_preemptions: int
    attention_kernels: dict[str, int]
    tuned_gemm: dict[str, Any] | None = None
    hf_runs: list[HfRun] = field(default_factory=list)

    @property
    def requests_per_s(self) -> float:
        return self.num_prompts / self.elapsed_s

    @property
    def output_tokens_per_s(self) -> float:
        return self.output_tokens / self.elapsed_s

    @property
    def total_tokens_per_s(self) -> float:
        return (self.prompt_tokens + self.output_tokens) / self.elapsed_s

    @property
    def hf_best(self) -> HfRun | None:
        return max(self.hf_runs, key=lambda run: run.tokens_per_s, default=None)

    @property
    def speedup_vs_hf(self) -> float | None:
        best = self.hf_best
        return None if best is None else self.output_tokens_per_s / best.tokens_per_s

    def as_dict(self) -> dict[str, Any]:
        best = self.hf_best
        return {
            **asdict(self),
            "hf_runs": [{**asdict(run), "tokens_per_s": run.tokens_per_s} for run in self.hf_runs],
            "requests_per_s": self.requests_per_s,
            "output_tokens_per_s": self.output_tokens_per_s,
            "total_tokens_per_s": self.total_tokens_per_s,
            "hf_best_batch_size": None if best is None else best.batch_size,
            "hf_tokens_per_s": None if best is None else best.tokens_per_s,
            "speedup_vs_hf": self.speedup_vs_hf,
        }

    def summary(self) -> str:
        lines = [
            (
                f"{self.model} {self.dtype} on {self.device}: {self.num_prompts} requests, "
                f"{self.prompt_tokens} prompt and {self.output_tokens} output tokens, "
                f"EOS {'ignored' if self.ignore_eos else 'honoured'}, "
                f"CUDA graphs {'on' if self.cuda_graphs else 'off'}"
            ),
            (
                f"  solidx: {self.elapsed_s:.2f} s, {self.requests_per_s:.2f} requests/s, "
                f"{self.output_tokens_per_s:.1f} output tokens/s, "
                f"{self.total_tokens_per_s:.1f} total tokens/s, "
                f"{self.num_preemptions} preemptions"
            ),
            f"  attention kernels: {dict(self.attention_kernels)}",
        ]
        if self.tuned_gemm is not None:
            lines.append(tuned_gemm_line(self.tuned_gemm))
        if self.hf_runs:
            lines.append(
                "  transformers generate, greedy, EOS ignored, one left-padded batch of the first "
                "B requests each (output tokens within each request's length / wall time):"
            )
            for run in self.hf_runs:
                lines.append(
                    f"    batch {run.batch_size}: {run.tokens_per_s:.1f} output tokens/s "
                    f"({run.output_tokens} tokens, {run.new_tokens} new per row, "
                    f"{run.seconds:.2f} s)"
                )
            best = self.hf_best
            lines.append(
                f"  best transformers batch {best.batch_size}: solidx is {self.speedup_vs_hf:.2f}x"
            )
        return "\n".join(lines)


def bench_throughput(
    model: str = "llama-3-8b",
    num_prompts: int = 256,
    input_len: Lengths = 128,
    output_len: Lengths = 128,
    prompts: list[str | dict[str, Any]] | None = None,
    ignore_eos: bool = False,
    enforce_eager: bool = False,
    compare_hf: bool = False,
    hf_batch_sizes: tuple[int, ...] = (8, 32, 64),
    hf_max_new_tokens: int = 256,
    seed: int = 0,
    **engine_kwargs: Any,
) -> ThroughputResult:
    """Run the workload (``prompts`` with ``output_len``, else ``num_prompts`` random prompts of
    ``input_len``) through the engine after a warm-up over the same prompt lengths; greedy.
    ``engine_kwargs`` are ``LLM`` options; a preset runs on dummy weights; ``max_model_len``
    defaults to the longest request and ``max_num_seqs`` to min(requests, 256)."""
    if prompts is not None:
        tokenizer = get_tokenizer(Config(model=model, **with_dummy(model, engine_kwargs)))
        requests = given_requests(prompts, tokenizer, output_len, seed)
    else:
        vocab = int(load_model_config(model)["vocab_size"])
        requests = random_requests(vocab, num_prompts, input_len, output_len, seed)
    max_len = max(len(r.prompt_token_ids) for r in requests) + max(r.output_len for r in requests)
    if engine_kwargs.get("device") == "cpu" or not torch.cuda.is_available():
        warn_if_slow_on_cpu(model)
    logger.info("bench throughput: building the engine for %s", model)
    llm = engine_for(
        model,
        min(len(requests), DEFAULT_MAX_NUM_SEQS),
        max_len,
        enforce_eager=enforce_eager,
        seed=seed,
        **engine_kwargs,
    )
    engine = llm.llm_engine
    inputs = [{"prompt_token_ids": r.prompt_token_ids} for r in requests]
    params = [
        SamplingParams(temperature=0, max_tokens=r.output_len, ignore_eos=ignore_eos)
        for r in requests
    ]
    # The warm-up runs every prompt's prefill and a few decode steps, so the steps the timed run
    # meets (prompt chunks, mixed batches, every decode bucket) have their kernels compiled;
    # its token ids are shifted by one, so no prefix of the timed prompts is cached.
    vocab_size = engine.model_runner.vocab_size
    warm_up = [{"prompt_token_ids": [(t + 1) % vocab_size for t in r.prompt_token_ids]}
               for r in requests]
    logger.info("bench throughput: warm-up (every prefill, 4 decode steps)")
    llm.generate(warm_up, SamplingParams(temperature=0, max_tokens=4, ignore_eos=True),
                 use_tqdm=False)
    logger.info("bench throughput: timing %d requests (progress per finished request)",
                len(requests))

    kernels_before = Counter(attention.KERNEL_COUNTS)
    preemptions_before = engine.scheduler.num_preemptions
    device = engine.model_runner.device
    with Stopwatch(device) as watch:
        outputs = llm.generate(inputs, params)
    elapsed = watch.seconds
    failed = [out.error for out in outputs if out.error]
    if failed:
        raise ValueError(f"{len(failed)} request(s) refused, e.g.: {failed[0]}")
    result = ThroughputResult(
        model=model,
        device=device_name(device),
        dtype=str(engine.config.torch_dtype).removeprefix("torch."),
        cuda_graphs=engine.model_runner.graphs is not None,
        num_prompts=len(requests),
        ignore_eos=ignore_eos,
        prompt_tokens=sum(len(r.prompt_token_ids) for r in requests),
        output_tokens=sum(len(out.outputs[0].token_ids) for out in outputs),
        elapsed_s=elapsed,
        num_preemptions=engine.scheduler.num_preemptions - preemptions_before,
        attention_kernels=dict(Counter(attention.KERNEL_COUNTS) - kernels_before),
        tuned_gemm=tuned_gemms(engine.model_runner.model).report(),
    )
    if compare_hf:
        logger.info("bench throughput: timing transformers generate")
        dtype = engine.config.torch_dtype
        del llm, engine, outputs
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        result.hf_runs = hf_throughput(
            model, requests, device, dtype, hf_batch_sizes, hf_max_new_tokens
        )
    return result


def hf_throughput(
    model: str,
    requests: list[Request],
    device: torch.device,
    dtype: torch.dtype,
    batch_sizes: tuple[int, ...],
    max_new_tokens: int,
) -> list[HfRun]:
    """One ``HfRun`` per batch size (sizes above the number of requests become that number)."""
    hf = load_hf_model(model, device, dtype)
    runs = []
    for batch_size in sorted({min(b, len(requests)) for b in batch_sizes}):
        batch = requests[:batch_size]
        new_tokens = min(max(r.output_len for r in batch), max_new_tokens)
        input_ids, attention_mask = left_pad([r.prompt_token_ids for r in batch], device)
        seconds = hf_generate_seconds(hf, input_ids, attention_mask, new_tokens)
        useful = sum(min(r.output_len, new_tokens) for r in batch)
        runs.append(HfRun(batch_size, new_tokens, useful, seconds))
    return runs
