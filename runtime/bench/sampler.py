"""The sampler's cost per decode step for each group of sampling settings, beside greedy:
``python -m solidx.runtime.bench.sampler [--vocab V] [--batch-sizes 1,64,256] [--output-json F]``.

Logits are random [B, V] float32 rows; penalties see prompts of ``--prompt-len`` and outputs of
``--output-len`` random tokens per row. Each figure is :func:`solidx.runtime.bench.attention.
time_ms` of one sampler call (and of the top-20 logprobs for "logprobs").
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import torch

from solidx.runtime.bench.attention import time_ms
from solidx.runtime.bench.result import device_name
from solidx.runtime.layers.sampler import SamplingTensors, compute_logprobs, sample
from solidx.runtime.sampling_metadata import ROW_WORDS, SamplingMode, unpack

SETTINGS = ("greedy", "temperature", "top_k_top_p", "min_p", "penalties", "min_tokens",
            "seeded", "all", "logprobs")


def settings(name: str, rows: int, vocab: int, prompt_len: int, output_len: int,
             device: torch.device) -> SamplingTensors:
    """The sampler's tensors for one named group of settings (``all``: every one at once)."""
    every = name == "all"
    penalties = every or name == "penalties"
    greedy = name in ("greedy", "logprobs")
    packed = torch.zeros(rows, ROW_WORDS, dtype=torch.int32, device=device)
    mode = SamplingMode(greedy, every or name == "top_k_top_p", every or name == "min_p")
    params = unpack(packed, mode)
    params.temperatures.fill_(0.0 if greedy else 0.8)
    params.top_k.fill_(50 if mode.use_top_k_top_p else vocab)
    params.top_p.fill_(0.9 if mode.use_top_k_top_p else 1.0)
    params.min_p.fill_(0.05 if mode.use_min_p else 0.0)
    if every or name == "seeded":
        params.seeds[:, 0] = torch.arange(rows, device=device)
    if penalties:
        half = torch.full((rows,), 0.5, device=device)
        params.presence_penalties = params.frequency_penalties = half
        params.repetition_penalties = torch.full((rows,), 1.2, device=device)
        params.prompt_tokens = torch.randint(0, vocab, (rows, prompt_len), device=device)
        params.output_tokens = torch.randint(0, vocab, (rows, output_len), device=device)
    if every or name == "min_tokens":
        params.suppress = (torch.arange(rows, device=device).repeat_interleave(2),
                           torch.tensor([0, 1], device=device).repeat(rows))
    return params


def run(vocab: int, batch_sizes: list[int], prompt_len: int, output_len: int,
        device: torch.device) -> list[dict]:
    rows = []
    for batch in batch_sizes:
        logits = torch.randn(batch, vocab, device=device) * 3
        for name in SETTINGS:
            params = settings(name, batch, vocab, prompt_len, output_len, device)
            fn: Callable[[], object] = lambda: sample(logits, params)  # noqa: E731
            if name == "logprobs":
                fn = lambda: compute_logprobs(logits, sample(logits, params), 20)  # noqa: E731
            rows.append({"batch": batch, "settings": name, "ms": time_ms(fn, device)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--batch-sizes", default="1,64,256")
    parser.add_argument("--prompt-len", type=int, default=1024)
    parser.add_argument("--output-len", type=int, default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output-json")
    args = parser.parse_args()
    try:
        batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    except ValueError:
        parser.error(f"--batch-sizes: expected integers joined by commas: {args.batch_sizes!r}")
    device = torch.device(args.device)
    rows = run(args.vocab, batch_sizes, args.prompt_len, args.output_len, device)
    if args.output_json:
        record = {"device": device_name(device), "vocab": args.vocab, "rows": rows}
        with open(args.output_json, "w") as f:
            json.dump(record, f, indent=1)
    greedy = {r["batch"]: r["ms"] for r in rows if r["settings"] == "greedy"}
    print(f"sampler on {device_name(device)}, vocab {args.vocab} (ms per call, x greedy)")
    print(f"{'settings':<12}" + "".join(f"{'B=' + str(b):>18}" for b in batch_sizes))
    for name in SETTINGS:
        cells = [next(r["ms"] for r in rows if r["batch"] == b and r["settings"] == name)
                 for b in batch_sizes]
        print(f"{name:<12}" + "".join(
            f"{ms:>10.3f} ({ms / greedy[b]:>4.1f}x)" for ms, b in zip(cells, batch_sizes)))


if __name__ == "__main__":
    main()
