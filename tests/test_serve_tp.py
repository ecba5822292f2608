"""``solidx serve`` under torchrun with two CPU ranks (gloo): rank 0 serves, rank 1 follows its
schedule, and the text is the engine's at tensor-parallel size 1."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from solidx.runtime import LLM, SamplingParams

from tests.checkpoints import make_checkpoint
from tests.serve_helpers import start_server, stop_server

openai = pytest.importorskip("openai")  # the serve extra: not on every machine
pytest.importorskip("fastapi")

PROMPTS = ["The quick brown fox", "Hello there"]


def test_tp2_server_gives_the_tp1_text(tmp_path: Path) -> None:
    model = make_checkpoint(tmp_path / "llama", "llama-mha")
    greedy = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    llm = LLM(str(model), device="cpu", dtype="float32", max_model_len=128)
    expected = [o.outputs[0].text for o in llm.generate(PROMPTS, greedy, use_tqdm=False)]
    proc, url = start_server(str(model), ["--max-model-len", "128"], tmp_path / "tp.log",
                             ranks=2, timeout_s=240)
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", timeout=60, max_retries=0)
        texts = []
        for prompt in PROMPTS:
            out = client.completions.create(model=str(model), prompt=prompt, max_tokens=8,
                                            temperature=0, extra_body={"ignore_eos": True})
            texts.append(out.choices[0].text)
        streamed = client.completions.create(model=str(model), prompt=PROMPTS[0], max_tokens=8,
                                             temperature=0, stream=True,
                                             extra_body={"ignore_eos": True})
        assert "".join(c.choices[0].text for c in streamed) == expected[0]
        assert texts == expected
        assert httpx.get(url + "/health", timeout=10).status_code == 200
    finally:
        stop_server(proc)
