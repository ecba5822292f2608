"""``solidx bench serve``: load a running OpenAI-compatible server as vLLM's benchmark_serving
does, and report request and output-token throughput, TTFT, TPOT and ITL.

Requests are streamed ``/v1/completions`` calls sent at a Poisson ``request_rate`` (``inf``: all
at once) and at most ``max_concurrency`` at a time. Random prompts are ``input_len`` token ids
drawn from the byte range every vocabulary has (3..258), sent as ``prompt`` token lists so the
server sees exactly that many tokens. TTFT is the time to the first streamed chunk; ITL the gaps
between chunks; TPOT a request's (latency - TTFT) / (output tokens - 1).
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
from dataclasses import dataclass, field
from typing import Any, Union

import aiohttp
from solidx.gradlib.timing import wall_seconds
from solidx.runtime.bench.result import BenchResult

Prompt = Union[str, list[int]]


@dataclass
class RequestResult:
    ok: bool
    latency: float = 0.0
    ttft: float = 0.0
    itl: list[float] = field(default_factory=list)
    output_tokens: int = 0
    error: str = ""


def random_prompts(num: int, input_len: int, seed: int) -> list[Prompt]:
    rng = random.Random(seed)
    return [[rng.randrange(3, 259) for _ in range(input_len)] for _ in range(num)]


async def _one(session: aiohttp.ClientSession, url: str, body: dict[str, Any],
               headers: dict[str, str]) -> RequestResult:
    start = wall_seconds()
    last, result = start, RequestResult(ok=False)
    try:
        async with session.post(url, json=body, headers=headers) as response:
            if response.status != 200:
                return RequestResult(False, error=f"HTTP {response.status}: "
                                     f"{(await response.text())[:200]}")
            async for raw in response.content:
                line = raw.decode().strip()
                if not line.startswith("data:") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[5:])
                if "error" in chunk:
                    return RequestResult(False, error=str(chunk["error"]))
                now = wall_seconds()
                if chunk.get("usage"):
                    result.output_tokens = chunk["usage"]["completion_tokens"]
                if not chunk.get("choices"):
                    continue
                if result.ttft == 0.0:
                    result.ttft = now - start
                else:
                    result.itl.append(now - last)
                last = now
    except aiohttp.ClientError as exc:
        return RequestResult(False, error=f"{type(exc).__name__}: {exc}")
    result.ok, result.latency = True, wall_seconds() - start
    return result


def _stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {"mean_ms": 0.0, "median_ms": 0.0, "p99_ms": 0.0}
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return {"mean_ms": 1e3 * statistics.fmean(values),
            "median_ms": 1e3 * statistics.median(values), "p99_ms": 1e3 * p99}


@dataclass
class ServeBenchResult(BenchResult):
    base_url: str
    num_prompts: int
    request_rate: float
    max_concurrency: int | None
    duration_s: float
    completed: int
    failed: int
    total_input_tokens: int
    total_output_tokens: int
    ttft: dict[str, float]
    tpot: dict[str, float]
    itl: dict[str, float]
    errors: list[str]

    @property
    def request_throughput(self) -> float:
        return self.completed / self.duration_s if self.duration_s else 0.0

    @property
    def output_throughput(self) -> float:
        return self.total_output_tokens / self.duration_s if self.duration_s else 0.0

    def summary(self) -> str:
        rate = "inf" if self.request_rate == float("inf") else f"{self.request_rate:g}"
        lines = [
            f"bench serve {self.base_url}: {self.num_prompts} requests, rate {rate}/s, "
            f"concurrency {self.max_concurrency or 'unbounded'}",
            f"  completed {self.completed}, failed {self.failed} in {self.duration_s:.2f} s",
            f"  request throughput {self.request_throughput:.2f} req/s, output "
            f"{self.output_throughput:.1f} tok/s ({self.total_input_tokens} in, "
            f"{self.total_output_tokens} out)",
            f"  {'ms':<6}{'mean':>10}{'median':>10}{'p99':>10}",
        ]
        for name, s in (("TTFT", self.ttft), ("TPOT", self.tpot), ("ITL", self.itl)):
            lines.append(f"  {name:<6}{s['mean_ms']:>10.2f}{s['median_ms']:>10.2f}"
                         f"{s['p99_ms']:>10.2f}")
        lines += [f"  error: {e}" for e in self.errors[:3]]
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "base_url": self.base_url, "num_prompts": self.num_prompts,
            "request_rate": str(self.request_rate), "max_concurrency": self.max_concurrency,
            "duration_s": self.duration_s, "completed": self.completed, "failed": self.failed,
            "total_input_tokens": self.total_input_tokens,
            "total_output_tokens": self.total_output_tokens,
            "request_throughput": self.request_throughput,
            "output_throughput": self.output_throughput,
            "ttft": self.ttft, "tpot": self.tpot, "itl": self.itl, "errors": self.errors[:10],
        }


async def _run(base_url: str, model: str | None, prompts: list[Prompt], output_len: int,
               request_rate: float, max_concurrency: int | None, ignore_eos: bool,
               api_key: str | None, seed: int, timeout_s: float) -> ServeBenchResult:
    url = base_url.rstrip("/") + "/v1/completions"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    gate = asyncio.Semaphore(max_concurrency or len(prompts) or 1)
    rng = random.Random(seed)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    connector = aiohttp.TCPConnector(limit=max_concurrency or 0)

    async def send(session: aiohttp.ClientSession, prompt: Prompt) -> RequestResult:
        body: dict[str, Any] = {"prompt": prompt, "max_tokens": output_len, "stream": True,
                                "temperature": 0.0, "ignore_eos": ignore_eos,
                                "stream_options": {"include_usage": True}}
        if model:
            body["model"] = model
        async with gate:
            return await _one(session, url, body, headers)

    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        start = wall_seconds()
        tasks = []
        for prompt in prompts:
            tasks.append(asyncio.ensure_future(send(session, prompt)))
            if request_rate != float("inf"):
                await asyncio.sleep(rng.expovariate(request_rate))
        results = await asyncio.gather(*tasks)
        duration = wall_seconds() - start
    good = [r for r in results if r.ok]
    tpots = [(r.latency - r.ttft) / (r.output_tokens - 1) for r in good if r.output_tokens > 1]
    return ServeBenchResult(
        base_url, len(prompts), request_rate, max_concurrency, duration, len(good),
        len(results) - len(good), sum(len(p) for p in prompts if isinstance(p, list)),
        sum(r.output_tokens for r in good), _stats([r.ttft for r in good]), _stats(tpots),
        _stats([x for r in good for x in r.itl]), [r.error for r in results if not r.ok],
    )


def bench_serve(base_url: str, prompts: list[Prompt], output_len: int, *,
                model: str | None = None, request_rate: float = float("inf"),
                max_concurrency: int | None = None, ignore_eos: bool = True,
                api_key: str | None = None, seed: int = 0,
                timeout_s: float = 3600.0) -> ServeBenchResult:
    """Send every prompt to the server at ``base_url`` and measure (see the module doc)."""
    if not prompts:
        raise ValueError("bench serve needs at least one prompt")
    if request_rate <= 0:
        raise ValueError(f"request_rate must be > 0 (inf: all at once), got {request_rate}")
    return asyncio.run(_run(base_url, model, prompts, output_len, request_rate,
                            max_concurrency, ignore_eos, api_key, seed, timeout_s))
