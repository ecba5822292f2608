"""Latency benchmark: one batch of random prompts through the engine (CUDA graphs unless
``enforce_eager``), greedy, EOS ignored, and optionally Hugging Face transformers ``generate`` on
the same architecture in the same run.

Decode speed is reported as gpt-fast does: decode steps per second and the weight bandwidth they
imply (bytes of the weights one step reads × steps per second). The device's copy bandwidth,
measured in the same run, bounds that: ``copy GB/s / weight bytes`` steps per second at most, and
the result says what share of the bound the engine reached. With ``profile``, a few more decode
steps of the same engine run under ``torch.profiler`` afterwards
(:mod:`solidx.runtime.bench.step_profile`): where one step goes.
"""

from __future__ import annotations

import gc
import logging
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import torch

from solidx.gradlib.timing import Stopwatch, copy_bandwidth
from solidx.runtime import attention
from solidx.runtime.bench.cpu_guard import warn_if_slow_on_cpu
from solidx.runtime.bench.hf import hf_generate_seconds, load_hf_model
from solidx.runtime.bench.result import BenchResult, device_name, tuned_gemm_line
from solidx.runtime.bench.step_profile import MIN_OUTPUT_LEN, StepProfile, profile_decode
from solidx.runtime.bench.workload import engine_for, random_prompts
from solidx.runtime.layers.linear import tuned_gemms
from solidx.runtime.sampling_params import SamplingParams

logger = logging.getLogger(__name__)


@dataclass
class LatencyResult(BenchResult):
    """Times in seconds. ``tokens_per_s``: generated tokens of the whole batch over the whole run;
    ``decode_steps_per_s``: steps after the first token, per second (tokens/s per sequence);
    ``weight_gb_per_s``: ``weight_bytes`` × decode steps/s (``weight_bytes`` is what a decode step
    reads on one GPU: every parameter of its shard but the embedding table); ``copy_gb_per_s``:
    device-to-device copy bandwidth (read + write) measured in the same run;
    ``bound_steps_per_s``: the decode steps/s that reading the weights at copy bandwidth allows;
    ``tuned_gemm``: the tuned file's summary and how many distinct GEMM problems ran with a
    tuned solution (hits) or the default (misses), in all and by layer kind (``by_kind``: qkv,
    o, gate_up, down, lm_head); ``step_profile``: where a decode step goes, when asked."""

    model: str
    device: str
    dtype: str
    quantization: str | None
    tensor_parallel_size: int
    batch_size: int
    input_len: int
    output_len: int
    cuda_graphs: bool
    time_to_first_token_s: float
    total_s: float
    tokens_per_s: float
    decode_steps_per_s: float
    weight_bytes: int
    weight_gb_per_s: float
    copy_gb_per_s: float
    bound_steps_per_s: float
    attention_kernels: dict[str, int]
    tuned_gemm: dict[str, Any] | None = None
    hf_total_s: float | None = None
    hf_tokens_per_s: float | None = None
    step_profile: StepProfile | None = None

    @property
    def speedup_vs_hf(self) -> float | None:
        return None if self.hf_tokens_per_s is None else self.tokens_per_s / self.hf_tokens_per_s

    @property
    def percent_of_bound(self) -> float:
        return 100 * self.decode_steps_per_s / self.bound_steps_per_s

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "percent_of_bound": self.percent_of_bound,
            "speedup_vs_hf": self.speedup_vs_hf,
            "step_profile": None if self.step_profile is None else self.step_profile.as_dict(),
        }

    def summary(self) -> str:
        tp = self.tensor_parallel_size
        devices = f"{tp} × {self.device}, TP {tp}" if tp > 1 else self.device
        per_gpu = " per GPU" if tp > 1 else ""
        lines = [
            (
                f"{self.model} {self.dtype}{f' {self.quantization}' if self.quantization else ''} "
                f"on {devices}: batch {self.batch_size}, "
                f"{self.input_len} in / {self.output_len} out, "
                f"CUDA graphs {'on' if self.cuda_graphs else 'off'}"
            ),
            (
                f"  solidx: {self.tokens_per_s:.1f} tokens/s, "
                f"decode {self.decode_steps_per_s:.1f} steps/s = "
                f"{self.weight_gb_per_s:.1f} GB/s of weights{per_gpu}, "
                f"TTFT {1e3 * self.time_to_first_token_s:.1f} ms, total {self.total_s:.2f} s"
            ),
            (
                f"  weight-bandwidth bound: copy {self.copy_gb_per_s:.0f} GB/s / "
                f"{self.weight_bytes / 1e9:.2f} GB of weights = "
                f"{self.bound_steps_per_s:.1f} steps/s; reached {self.percent_of_bound:.1f}%"
            ),
            f"  attention kernels: {dict(self.attention_kernels)}",
        ]
        if self.tuned_gemm is not None:
            lines.append(tuned_gemm_line(self.tuned_gemm))
        if self.hf_tokens_per_s is not None:
            lines.append(
                f"  transformers generate: {self.hf_tokens_per_s:.1f} tokens/s, total "
                f"{self.hf_total_s:.2f} s; solidx is {self.speedup_vs_hf:.2f}x"
            )
        if self.step_profile is not None:
            lines.append(self.step_profile.summary())
        return "\n".join(lines)


def bench_latency(
    model: str = "llama-3-8b",
    input_len: int = 128,
    output_len: int = 256,
    batch_size: int = 1,
    enforce_eager: bool = False,
    compare_hf: bool = False,
    seed: int = 0,
    profile: bool = False,
    **engine_kwargs: Any,
) -> LatencyResult:
    """Time one batch of ``batch_size`` random prompts of ``input_len`` tokens generating
    ``output_len`` tokens each, after a short warm-up; with ``profile``, then profile decode
    steps of a new batch of the same shape (``output_len`` >= 5). ``engine_kwargs`` are ``LLM``
    options; a preset runs on dummy weights. Each stage is logged as it starts (big models take
    minutes on a CPU: a warning says so before loading)."""
    if profile and output_len < MIN_OUTPUT_LEN:
        raise ValueError(f"profiling needs output_len >= {MIN_OUTPUT_LEN}, got {output_len}")
    if engine_kwargs.get("device") == "cpu" or not torch.cuda.is_available():
        warn_if_slow_on_cpu(model)
    logger.info("bench latency: building the engine for %s", model)
    llm = engine_for(
        model,
        batch_size,
        input_len + output_len,
        enforce_eager=enforce_eager,
        seed=seed,
        **engine_kwargs,
    )
    result, requests = _measure(llm, model, batch_size, input_len, output_len, seed)
    if profile:
        logger.info("bench latency: profiling decode steps")
        quantization = f" {result.quantization}" if result.quantization else ""
        result.step_profile = profile_decode(
            llm, batch_size, input_len, output_len, seed,
            label=f"{model} {result.dtype}{quantization} on {result.device}",
            timed_step_ms=1e3 / result.decode_steps_per_s,
        )
    if compare_hf:
        logger.info("bench latency: timing transformers generate on the same batch")
        config, device = llm.llm_engine.config, llm.llm_engine.model_runner.device
        del llm
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        prompts = torch.tensor([r["prompt_token_ids"] for r in requests], device=device)
        hf = load_hf_model(model, device, config.torch_dtype)
        hf_total = hf_generate_seconds(hf, prompts, torch.ones_like(prompts), output_len)
        result.hf_total_s = hf_total
        result.hf_tokens_per_s = batch_size * output_len / hf_total
    return result


def bench_latency_sweep(
    model: str,
    batch_sizes: list[int],
    input_len: int = 128,
    output_len: int = 256,
    enforce_eager: bool = False,
    seed: int = 0,
    **engine_kwargs: Any,
) -> list[LatencyResult]:
    """:func:`bench_latency` at each of ``batch_sizes`` in one engine (sized for the largest),
    so that a sweep loads the model and captures its graphs once (each result's ``tuned_gemm``
    counts the problems of every batch run so far)."""
    llm = engine_for(model, max(batch_sizes), input_len + output_len,
                     enforce_eager=enforce_eager, seed=seed, **engine_kwargs)
    return [_measure(llm, model, b, input_len, output_len, seed)[0] for b in batch_sizes]


def _measure(
    llm: Any, model: str, batch_size: int, input_len: int, output_len: int, seed: int
) -> tuple[LatencyResult, list[dict[str, Any]]]:
    """One timed batch on ``llm`` (after a short warm-up), and the prompts it ran."""
    runner = llm.llm_engine.model_runner
    requests = random_prompts(runner.vocab_size, batch_size, input_len, seed)
    params = SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True)

    logger.info("bench latency: warm-up (4 tokens)")
    llm.generate(
        requests, SamplingParams(temperature=0, max_tokens=4, ignore_eos=True), use_tqdm=False
    )
    logger.info("bench latency: timing %d × %d prompt tokens, %d new tokens each", batch_size,
                input_len, output_len)
    kernels_before = Counter(attention.KERNEL_COUNTS)
    with Stopwatch(runner.device) as watch:
        outputs = llm.generate(requests, params, use_tqdm=False)
    total, start = watch.seconds, watch.start
    first = max(out.metrics.first_token_time for out in outputs) - start
    decode = max(out.metrics.finished_time for out in outputs) - first - start
    steps_per_s = (output_len - 1) / decode if output_len > 1 and decode > 0 else float("nan")
    weight_bytes = sum(
        p.numel() * p.element_size()
        for name, p in runner.model.named_parameters()
        if "embed_tokens" not in name or runner.model.args.tie_word_embeddings
    )
    copy_gbps = copy_bandwidth(runner.device)
    result = LatencyResult(
        model=model,
        device=device_name(runner.device),
        dtype=str(llm.llm_engine.config.torch_dtype).removeprefix("torch."),
        quantization=llm.llm_engine.config.quantization,
        tensor_parallel_size=llm.llm_engine.config.tensor_parallel_size,
        batch_size=batch_size,
        input_len=input_len,
        output_len=output_len,
        cuda_graphs=runner.graphs is not None,
        time_to_first_token_s=first,
        total_s=total,
        tokens_per_s=batch_size * output_len / total,
        decode_steps_per_s=steps_per_s,
        weight_bytes=weight_bytes,
        weight_gb_per_s=weight_bytes * steps_per_s / 1e9,
        copy_gb_per_s=copy_gbps,
        bound_steps_per_s=copy_gbps * 1e9 / weight_bytes,
        attention_kernels=dict(Counter(attention.KERNEL_COUNTS) - kernels_before),
        tuned_gemm=tuned_gemms(runner.model).report(),
    )
    return result, requests
