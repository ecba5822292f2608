"""``solidx capture-shapes``: write the GEMM problems a model issues to a shapes file."""
from __future__ import annotations

import click

from solidx.cli.csv_cmd import _shape_table
from solidx.gradlib.dtypes import parse_dtype
from solidx.gradlib.shapes_file import add_to_shapes_file
from solidx.runtime import envs
from solidx.shape_capture.from_config import problems_from_config
from solidx.shape_capture.presets import PRESETS, load_model_config


def int_list(value: str) -> list[int]:
    """Parse ``'1,2,4'`` into ``[1, 2, 4]`` (positive integers)."""
    try:
        numbers = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers") from None
    if any(n <= 0 for n in numbers):
        raise click.BadParameter(f"{value!r}: every number must be positive")
    return numbers


@click.command("capture-shapes")
@click.option("--model", required=True,
              help=f"Preset ({', '.join(PRESETS)}) or a checkpoint folder.")
@click.option("--tp", "--tensor-parallel-size", "tp", default=1, show_default=True,
              help="Tensor-parallel size: shapes are per shard.")
@click.option("--batch-sizes", default="1,2,4,8,16,32,64,128,256", show_default=True,
              help="Decode batch sizes (N of decode steps).")
@click.option("--prefill-tokens", default="", help="Prefill chunk sizes in tokens, e.g. 512,2048.")
@click.option("--dtype", "dtype", default="torch.float8_e4m3fn", show_default=True,
              help="Operand dtype of the linear layers.")
@click.option("--outdtype", default="torch.bfloat16", show_default=True,
              help="Output dtype of the linear layers.")
@click.option("--no-lm-head", is_flag=True, help="Leave the LM head out.")
@click.option("--run", is_flag=True,
              help="Record from a real engine run (dummy weights for a preset) instead of deriving"
                   " from the config.")
@click.option("--input-len", default=128, show_default=True,
              help="With --run: prompt tokens per sequence.")
@click.option("--output-len", default=8, show_default=True,
              help="With --run: generated tokens per sequence.")
@click.option("--quantization", default=None,
              help="With --run: the engine's quantization (e.g. fp8).")
@click.option("-o", "--output", default=None,
              help="Shapes file to merge into"
                   " [default: $SOLIDX_SHAPES_FILE or /tmp/fp8_shapes.csv].")
def capture_shapes(model: str, tp: int, batch_sizes: str, prefill_tokens: str, dtype: str,
                   outdtype: str, no_lm_head: bool, run: bool, input_len: int, output_len: int,
                   quantization: str | None, output: str | None) -> None:
    """Write the GEMM problems MODEL issues, per tensor-parallel shard, to a shapes file.

    Derived from the model's config (layers qkv_proj, o_proj, gate_up_proj, down_proj and the
    LM head) for each decode batch size and prefill chunk; or, with --run, recorded from the
    engine generating OUTPUT_LEN tokens for each batch size of random prompts, so the file holds
    exactly the problems the engine issues. Rows merge into an existing file.
    """
    output = output or envs.SOLIDX_SHAPES_FILE
    if run:
        from solidx.runtime.bench.workload import capture_workload

        from solidx.runtime.distributed import get_tp_rank

        rows = capture_workload(model, int_list(batch_sizes), input_len, output_len, output,
                                tensor_parallel_size=tp, quantization=quantization)
        if get_tp_rank() != 0:  # every rank merged its shard problems into the file
            return
        click.echo(_shape_table(rows))
        click.echo(f"recorded {len(rows)} problems into {output}")
        return
    try:
        config = load_model_config(model)
        model_dtype = parse_dtype(config.get("torch_dtype") or "bfloat16")
        rows = problems_from_config(
            config, tp=tp, batch_sizes=int_list(batch_sizes),
            prefill_tokens=int_list(prefill_tokens),
            dtype=parse_dtype(dtype), outdtype=parse_dtype(outdtype), model_dtype=model_dtype,
            lm_head=not no_lm_head,
        )
    except (ValueError, FileNotFoundError, KeyError) as exc:
        raise click.ClickException(str(exc)) from None
    add_to_shapes_file(output, rows)
    click.echo(_shape_table(rows))
    click.echo(f"wrote {len(rows)} problems to {output}")
