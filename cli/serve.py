"""``solidx serve``: the OpenAI-compatible server (needs ``pip install 'solidx[serve]'``)."""

from __future__ import annotations

from typing import Any

import click
from solidx.cli.engine_options import config_kwargs, engine_options
from solidx.shape_capture.presets import PRESETS


@click.command()
@click.argument("model_arg", metavar="MODEL", required=False)
@click.option("--model", help=f"Checkpoint folder or preset ({', '.join(PRESETS)}), or MODEL.")
@click.option("--host", default="0.0.0.0", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--api-key", default=None,
              help="Clients must send 'Authorization: Bearer KEY' (default: $VLLM_API_KEY).")
@click.option("--served-model-name", multiple=True,
              help="Model name(s) clients use (repeatable; default: MODEL).")
@click.option("--chat-template", default=None,
              help="Jinja chat template (a file, or the template) when the tokenizer has none.")
@click.option("--max-waiting-requests", default=256, show_default=True,
              type=click.IntRange(1), help="Requests waiting to be scheduled before 503s.")
@click.option("--uvicorn-log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug", "trace"]))
@engine_options
def serve(
    model_arg: str | None,
    model: str | None,
    host: str,
    port: int,
    api_key: str | None,
    served_model_name: tuple[str, ...],
    chat_template: str | None,
    max_waiting_requests: int,
    uvicorn_log_level: str,
    **options: Any,
) -> None:
    """Serve MODEL over the OpenAI API (/v1/completions, /v1/chat/completions, /v1/models,
    /health, /metrics). With --tensor-parallel-size N run it under torchrun
    --nproc-per-node=N: rank 0 serves, the other ranks follow its schedule."""
    import uvicorn
    from solidx.runtime import envs
    from solidx.runtime.config import Config
    from solidx.runtime.distributed import get_tp_rank
    from solidx.runtime.engine import LLMEngine
    from solidx.runtime.serve.api_server import ServerSettings, build_app
    from solidx.runtime.serve.async_engine import AsyncLLMEngine
    from solidx.runtime.serve.chat import ChatPrompter, load_chat_template
    from solidx.runtime.serve.engine_loop import follow

    if model_arg and model and model_arg != model:
        raise click.UsageError(f"MODEL {model_arg!r} and --model {model!r} differ")
    name = model_arg or model
    if not name:
        raise click.UsageError("give the model: solidx serve MODEL (or --model MODEL)")
    kwargs = config_kwargs(options)
    if kwargs.get("worker_use_ray") or kwargs.get("distributed_executor_backend") == "ray":
        raise click.UsageError("serve runs under torchrun, not Ray: drop --worker-use-ray")
    try:
        config = Config(model=name, **kwargs)
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    engine = LLMEngine(config)
    if get_tp_rank() != 0:
        follow(engine)
        return
    names = list(served_model_name) or [name]
    settings = ServerSettings(names, api_key or envs.VLLM_API_KEY, config.max_model_len,
                              engine.vocab_size)
    front = AsyncLLMEngine(engine, names[0], max_waiting_requests)
    chat = ChatPrompter(engine.tokenizer, load_chat_template(chat_template))
    app = build_app(front, settings, chat)
    uvicorn.run(app, host=host, port=port, log_level=uvicorn_log_level)
