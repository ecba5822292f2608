"""``solidx serve`` on a GPU with CUDA graphs: whole and streamed greedy text equal the offline
engine's on the same dummy weights (one request at a time, so the batches match), and
concurrent requests are all answered in full."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from solidx.runtime import LLM, SamplingParams

from tests.serve_helpers import start_server, stop_server

openai = pytest.importorskip("openai")  # the serve extra: not on every machine
pytest.importorskip("fastapi")

PROMPTS = [f"Request number {i} says" for i in range(8)]


@pytest.mark.gpu
def test_served_text_equals_offline_on_gpu(tmp_path: Path) -> None:
    greedy = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    llm = LLM("tiny-llama", load_format="dummy", device="cuda", dtype="bfloat16",
              max_model_len=256, kv_cache_memory_bytes=1 << 26)
    expected = [llm.generate([p], greedy, use_tqdm=False)[0].outputs[0].text for p in PROMPTS]
    del llm
    # a fixed cache: a share of the card would count the memory the test process still holds
    args = ["--load-format", "dummy", "--max-model-len", "256", "--kv-cache-memory-bytes",
            str(1 << 26)]
    device = ("--device", "cuda", "--dtype", "bfloat16")
    proc, url = start_server("tiny-llama", args, tmp_path / "gpu.log", device=device)

    async def ask(aclient: openai.AsyncOpenAI, prompt: str, stream: bool) -> str:
        body = dict(model="tiny-llama", prompt=prompt, max_tokens=24, temperature=0,
                    extra_body={"ignore_eos": True})
        if not stream:
            return (await aclient.completions.create(**body)).choices[0].text
        chunks = await aclient.completions.create(**body, stream=True)
        return "".join([c.choices[0].text async for c in chunks])

    async def main() -> tuple[list[str], list[str], list[str]]:
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="none",
                                      max_retries=0) as aclient:
            whole = [await ask(aclient, p, False) for p in PROMPTS]
            streamed = [await ask(aclient, p, True) for p in PROMPTS]
            together = await asyncio.gather(*(ask(aclient, p, True) for p in PROMPTS))
            return whole, streamed, list(together)

    try:
        whole, streamed, together = asyncio.run(main())
    finally:
        stop_server(proc)
    assert whole == expected and streamed == expected
    assert all(len(text) > 0 for text in together)
