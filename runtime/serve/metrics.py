"""The server's figures in Prometheus' text format (``GET /metrics``), with vLLM's names.

Gauges: requests running and waiting, KV-cache usage. Histograms: time to first token and time
per output token (seconds, measured by the server from a request's arrival). Counters: prompt
and generated tokens, finished requests by reason. Gauge: the tuned-GEMM file's hits (distinct
GEMM problems the engine ran with a tuned solution or with the default one).
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0)
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5,
                0.75, 1.0, 2.5)


@dataclass
class Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(init=False)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        index = bisect.bisect_left(self.buckets, value)
        if index < len(self.counts):
            self.counts[index] += 1
        self.total += value
        self.count += 1

    def lines(self, name: str, labels: str) -> list[str]:
        out, running = [], 0
        for bound, n in zip(self.buckets, self.counts):
            running += n
            out.append(f'{name}_bucket{{{labels},le="{bound}"}} {running}')
        out.append(f'{name}_bucket{{{labels},le="+Inf"}} {self.count}')
        out.append(f"{name}_sum{{{labels}}} {self.total}")
        out.append(f"{name}_count{{{labels}}} {self.count}")
        return out


@dataclass
class ServeMetrics:
    """Updated on the server's event loop; ``render`` gives the text of ``/metrics``."""

    model_name: str
    ttft: Histogram = field(default_factory=lambda: Histogram(TTFT_BUCKETS))
    tpot: Histogram = field(default_factory=lambda: Histogram(TPOT_BUCKETS))
    prompt_tokens: int = 0
    generation_tokens: int = 0
    finished: Counter = field(default_factory=Counter)

    def request_done(
        self, prompt_tokens: int, output_tokens: int, reason: str | None,
        ttft: float | None, tpot: float | None,
    ) -> None:
        self.prompt_tokens += prompt_tokens
        self.generation_tokens += output_tokens
        self.finished[reason or "abort"] += 1
        if ttft is not None:
            self.ttft.observe(ttft)
        if tpot is not None:
            self.tpot.observe(tpot)

    def render(
        self, running: int, waiting: int, kv_usage: float, preemptions: int,
        gemm_problems: dict[str, int],
    ) -> str:
        labels = f'model_name="{self.model_name}"'
        lines: list[str] = []

        def metric(name: str, kind: str, help_text: str, samples: list[str]) -> None:
            lines.extend([f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *samples])

        metric("vllm:num_requests_running", "gauge", "Requests in the running batch.",
               [f"vllm:num_requests_running{{{labels}}} {running}"])
        metric("vllm:num_requests_waiting", "gauge", "Requests waiting to be scheduled.",
               [f"vllm:num_requests_waiting{{{labels}}} {waiting}"])
        metric("vllm:gpu_cache_usage_perc", "gauge", "Share of KV-cache blocks in use (0..1).",
               [f"vllm:gpu_cache_usage_perc{{{labels}}} {kv_usage}"])
        metric("vllm:num_preemptions_total", "counter", "Preemptions by the scheduler.",
               [f"vllm:num_preemptions_total{{{labels}}} {preemptions}"])
        metric("vllm:prompt_tokens_total", "counter", "Prompt tokens of finished requests.",
               [f"vllm:prompt_tokens_total{{{labels}}} {self.prompt_tokens}"])
        metric("vllm:generation_tokens_total", "counter", "Tokens generated.",
               [f"vllm:generation_tokens_total{{{labels}}} {self.generation_tokens}"])
        metric("vllm:request_success_total", "counter", "Finished requests by reason.",
               [f'vllm:request_success_total{{{labels},finished_reason="{reason}"}} {n}'
                for reason, n in sorted(self.finished.items())])
        metric("vllm:time_to_first_token_seconds", "histogram", "Time to first token.",
               self.ttft.lines("vllm:time_to_first_token_seconds", labels))
        metric("vllm:time_per_output_token_seconds", "histogram", "Time per output token.",
               self.tpot.lines("vllm:time_per_output_token_seconds", labels))
        metric("solidx:tuned_gemm_problems", "gauge",
               "GEMM problems run, by solution kind (tuned or default).",
               [f'solidx:tuned_gemm_problems{{{labels},solution="{kind}"}} {n}'
                for kind, n in sorted(gemm_problems.items())])
        return "\n".join(lines) + "\n"
