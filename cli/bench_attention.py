"""``solidx bench attention``: the attention kernels against SDPA flash and FlexAttention."""
from __future__ import annotations

import click
import torch

from solidx.cli.capture import int_list
from solidx.cli.engine_options import report
from solidx.gradlib.dtypes import parse_dtype
from solidx.runtime.bench.attention import BenchConfig, format_row, run_benchmark


@click.command("attention")
@click.option("--batch-size", default=32, show_default=True, help="Decode batch size.")
@click.option("--context-lens", default="4096,16384", show_default=True,
              help="Decode context lengths.")
@click.option("--prefill-lens", default="4096", show_default=True,
              help="Prefill sequence lengths (one causal sequence each).")
@click.option("--num-heads", default=32, show_default=True)
@click.option("--num-kv-heads", default=8, show_default=True)
@click.option("--head-size", default=128, show_default=True)
@click.option("--block-size", default=16, show_default=True, help="KV-cache block size in tokens.")
@click.option("--dtype", default="bfloat16", show_default=True, help="float16 or bfloat16.")
@click.option("--sweep", is_flag=True,
              help="Also time candidate launch configurations of the Triton kernels.")
@click.option("--max-model-len", type=int, default=None,
              help="Time decode as a CUDA graph captured at this max_model_len runs it (custom "
                   "and v2 with max_context_len = this, 32 calls per graph) over the real "
                   "--context-lens.")
@click.option("--output-json", default=None, help="Write every figure to this JSON file.")
def attention(batch_size: int, context_lens: str, prefill_lens: str, num_heads: int,
              num_kv_heads: int, head_size: int, block_size: int, dtype: str, sweep: bool,
              max_model_len: int | None, output_json: str | None) -> None:
    """Time prefill (Triton vs SDPA flash) and paged decode (custom, v2 vs SDPA flash and
    FlexAttention paged) on the GPU; report GB/s of KV read and % of the measured copy bandwidth.
    With --max-model-len, decode is timed inside CUDA graphs captured at that bound."""
    if not torch.cuda.is_available():
        raise click.ClickException("solidx bench attention needs a CUDA GPU")
    try:
        cfg = BenchConfig(batch_size, tuple(int_list(context_lens)), tuple(int_list(prefill_lens)),
                          num_heads, num_kv_heads, head_size, block_size, parse_dtype(dtype), sweep,
                          max_model_len)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    result = run_benchmark(cfg, torch.device("cuda"),
                           progress=lambda row: click.echo(format_row(row)))
    report(result, output_json)
    if output_json:
        click.echo(f"wrote {output_json}")


if __name__ == "__main__":
    attention()
