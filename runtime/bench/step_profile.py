"""``solidx bench latency --profile``: a few decode steps of an engine under ``torch.profiler``
(CPU and CUDA activities on a GPU, CPU only on a CPU), read by
:mod:`solidx.runtime.bench.step_breakdown` into where one step goes: a table, and a picture
(a stacked horizontal bar) with its figures as JSON beside it.

The steps are the engine's own ``step`` calls on a fresh batch of random prompts, once every
sequence is decoding: ``WARMUP_STEPS`` steps under the profiler that are not counted (its
start-up cost lands in them), then up to ``MAX_STEPS`` counted steps and one that closes the
last window.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch.profiler import ProfilerActivity, profile, record_function

from solidx.runtime.bench.step_breakdown import HOST, StepBreakdown, from_trace
from solidx.runtime.bench.workload import random_prompts
from solidx.runtime.distributed import peers_needed
from solidx.runtime.sampling_params import SamplingParams

STEP_NAME = "solidx.decode_step"
WARMUP_STEPS = 2
MAX_STEPS = 8
MIN_OUTPUT_LEN = WARMUP_STEPS + 3
"""The prefill's token, the warm-up steps, one counted step and the step that closes it."""

COLORS = {
    "GEMM": "#4c72b0", "LM head": "#8172b3", "attention": "#dd8452",
    "norms & elementwise": "#55a868", "communication": "#c44e52", "sampling": "#937860",
    "copies": "#da8bc3", "other": "#8c8c8c", HOST: "#dddddd",
}


@dataclass
class StepProfile:
    """Where one decode step of ``label`` goes: ``batch_size`` sequences at contexts
    ``context_lens`` (first and last counted step); ``timed_step_ms``: the decode step of the
    timed run without the profiler, for comparison."""

    label: str
    batch_size: int
    context_lens: tuple[int, int]
    timed_step_ms: float
    breakdown: StepBreakdown

    def summary(self) -> str:
        b = self.breakdown
        lines = [
            f"  where a decode step goes (torch.profiler, mean of {b.steps} steps, batch "
            f"{self.batch_size}, context {self.context_lens[0]}-{self.context_lens[1]}; "
            f"{b.source}):",
            f"    step {b.step_ms:.3f} ms under the profiler "
            f"({self.timed_step_ms:.3f} ms in the timed run)",
            f"    {'part':<22}{'ms/step':>9}{'% of step':>11}{'count/step':>12}",
        ]
        for p in b.parts:
            count = "" if p.part == HOST else f"{p.count:.1f}"
            lines.append(f"    {p.part:<22}{p.ms:>9.3f}{p.percent:>10.1f}%{count:>12}")
        if b.idle_between_us:
            lines.append(f"    {_idle_line(b)}")
        others = [n for n in b.names if n.part == "other"][:3]
        if others:
            lines.append("    largest 'other': " + "; ".join(
                f"{n.name[:60]} {n.ms:.3f} ms" for n in others))
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "idle_between_mean_us": self.breakdown.idle_mean_us,
                "idle_between_max_us": self.breakdown.idle_max_us}

    def save(self, path: str | Path) -> tuple[Path, Path]:
        """The picture at ``path`` (PNG) and the figures at ``path`` with suffix ``.json``
        (missing folders are made)."""
        picture, figures = Path(path), Path(path).with_suffix(".json")
        picture.parent.mkdir(parents=True, exist_ok=True)
        _plot(self, picture)
        figures.write_text(json.dumps(self.as_dict(), indent=2))
        return picture, figures


def profile_decode(llm: Any, batch_size: int, input_len: int, output_len: int, seed: int,
                   label: str, timed_step_ms: float) -> StepProfile:
    """Profile decode steps of ``llm`` on ``batch_size`` new random prompts of ``input_len``
    tokens (``output_len`` >= ``MIN_OUTPUT_LEN`` bounds how many steps there are); the
    requests are aborted afterwards. Every tensor-parallel rank must make the same call."""
    if output_len < MIN_OUTPUT_LEN:
        raise ValueError(f"profiling needs output_len >= {MIN_OUTPUT_LEN}, got {output_len}")
    engine = llm.llm_engine
    counted = min(MAX_STEPS, output_len - MIN_OUTPUT_LEN + 1)
    on_gpu = engine.model_runner.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    prompts = random_prompts(engine.vocab_size, batch_size, input_len, seed + 1)
    params = SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True)
    ids = [f"profile-{i}" for i in range(batch_size)]
    with peers_needed():
        for request_id, prompt in zip(ids, prompts):
            engine.add_request(request_id, prompt, params)
        try:
            _until_decoding(engine, set(ids))
            with profile(activities=activities) as prof:
                for _ in range(WARMUP_STEPS + counted + 1):
                    with record_function(STEP_NAME):
                        engine.step()
        finally:
            engine.abort_request(ids)
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    first = input_len + 1 + WARMUP_STEPS
    return StepProfile(label, batch_size, (first, first + counted - 1), timed_step_ms,
                       from_trace(events, STEP_NAME, WARMUP_STEPS, on_gpu))


def _until_decoding(engine: Any, ids: set[str]) -> None:
    """Step ``engine`` until each request of ``ids`` has its first token (prefill done)."""
    waiting = set(ids)
    while waiting:
        for out in engine.step():
            if out.request_id in waiting and out.finished:
                raise RuntimeError(f"profiling request {out.request_id} finished during its "
                                   f"prefill: {out.error or out.outputs[0].finish_reason}")
            if out.request_id in waiting and out.outputs[0].token_ids:
                waiting.discard(out.request_id)


def _plot(result: StepProfile, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b = result.breakdown
    fig, ax = plt.subplots(figsize=(10, 1.6))
    left = 0.0
    for p in b.parts:
        if p.ms <= 0:
            continue
        ax.barh(0, p.ms, left=left, color=COLORS[p.part], edgecolor="white",
                label=f"{p.part}: {p.ms:.3f} ms ({p.percent:.1f}%)")
        if p.percent >= 6:
            ax.text(left + p.ms / 2, 0, f"{p.ms:.2f}", ha="center", va="center", fontsize=8)
        left += p.ms
    ax.set_yticks([])
    ax.set_xlim(0, max(left, 1e-9))
    ax.set_xlabel("ms per decode step")
    idle = f"; {_idle_line(b)}" if b.idle_between_us else ""
    ax.set_title(f"{result.label}: batch {result.batch_size}, context {result.context_lens[0]}-"
                 f"{result.context_lens[1]}, step {b.step_ms:.3f} ms{idle}\n{b.source}",
                 fontsize=9)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.5), ncol=3, fontsize=7, frameon=False)
    fig.savefig(path, dpi=130, format="png", bbox_inches="tight")
    plt.close(fig)


def _idle_line(b: StepBreakdown) -> str:
    what = "GPU idle between steps" if b.on_gpu else "no op running between steps"
    return f"{what}: mean {b.idle_mean_us:.1f} us, max {b.idle_max_us:.1f} us"

