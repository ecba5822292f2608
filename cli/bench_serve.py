"""``solidx bench serve``: an online benchmark against a running ``solidx serve`` (or any
OpenAI-compatible server), in the manner of vLLM's benchmark_serving."""

from __future__ import annotations

import click
from solidx.cli.engine_options import report
from solidx.cli.generate import read_prompts


@click.command("serve")
@click.option("--base-url", default="http://127.0.0.1:8000", show_default=True)
@click.option("--model", default=None, help="Model name to send (default: the server's).")
@click.option("--num-prompts", default=100, show_default=True, type=click.IntRange(1))
@click.option("--input-len", default=128, show_default=True, type=click.IntRange(1),
              help="Random prompts' tokens.")
@click.option("--output-len", default=128, show_default=True, type=click.IntRange(1))
@click.option("--prompts-file", type=click.Path(exists=True, dir_okay=False),
              help='Given prompts (text lines or JSONL with "prompt") instead of random ones.')
@click.option("--request-rate", default=float("inf"), show_default=True, type=float,
              help="Poisson arrivals per second (inf: all at once).")
@click.option("--max-concurrency", default=None, type=click.IntRange(1),
              help="Requests in flight at most.")
@click.option("--ignore-eos/--no-ignore-eos", default=True, show_default=True)
@click.option("--api-key", default=None)
@click.option("--seed", default=0, show_default=True)
@click.option("--output-json", type=click.Path(dir_okay=False), help="Write the figures here too.")
def serve_bench(base_url: str, model: str | None, num_prompts: int, input_len: int,
                output_len: int, prompts_file: str | None, request_rate: float,
                max_concurrency: int | None, ignore_eos: bool, api_key: str | None, seed: int,
                output_json: str | None) -> None:
    """Stream NUM_PROMPTS completions from the server at BASE_URL; print request and output
    throughput, TTFT, TPOT and ITL (mean, median, p99)."""
    from solidx.runtime.bench.serve import bench_serve, random_prompts

    if prompts_file:
        given = read_prompts(prompts_file)
        prompts = [p["prompt_token_ids"] if isinstance(p, dict) else p for p in given]
        prompts = (prompts * (num_prompts // len(prompts) + 1))[:num_prompts]
    else:
        prompts = random_prompts(num_prompts, input_len, seed)
    try:
        result = bench_serve(base_url, prompts, output_len, model=model,
                             request_rate=request_rate, max_concurrency=max_concurrency,
                             ignore_eos=ignore_eos, api_key=api_key, seed=seed)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--request-rate") from None
    report(result, output_json)
    if result.failed:
        raise click.ClickException(f"{result.failed} of {result.num_prompts} requests failed")
