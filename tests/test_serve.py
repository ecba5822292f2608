"""``solidx serve`` end to end: the real ``openai`` client against a real server subprocess on a
tiny checkpoint (CPU), beside the offline ``LLM`` on the same model."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from solidx.cli.main import main
from solidx.runtime import LLM, SamplingParams
from solidx.runtime.bench.serve import bench_serve, random_prompts

from tests.checkpoints import make_checkpoint
from tests.serve_helpers import API_KEY, CHAT_TEMPLATE, start_server, stop_server

openai = pytest.importorskip("openai")  # the serve extra: not on every machine
pytest.importorskip("fastapi")

PROMPT = "The quick brown fox"
MAX_LEN = 128


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("serve") / "llama", "llama-mha")


@pytest.fixture(scope="module")
def server(model: Path, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("server")
    template = folder / "chat.jinja"
    template.write_text(CHAT_TEMPLATE)
    args = ["--api-key", API_KEY, "--chat-template", str(template), "--max-model-len",
            str(MAX_LEN), "--max-num-seqs", "2", "--max-waiting-requests", "4",
            "--served-model-name", "tiny"]
    proc, url = start_server(str(model), args, folder / "server.log")
    yield url
    stop_server(proc)


@pytest.fixture(scope="module")
def client(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server + "/v1", api_key=API_KEY, timeout=60, max_retries=0)


@pytest.fixture(scope="module")
def offline(model: Path) -> str:
    llm = LLM(str(model), device="cpu", dtype="float32", max_model_len=MAX_LEN)
    out = llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=12, ignore_eos=True),
                       use_tqdm=False)
    return out[0].outputs[0].text


def _metric(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    match = re.search(rf"^{re.escape(name)}{{[^}}]*}} (\S+)$", text, re.M)
    assert match, f"{name} missing from /metrics"
    return float(match.group(1))


def test_completion_matches_offline_and_streams_the_same(client, offline) -> None:
    whole = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=12,
                                      temperature=0, extra_body={"ignore_eos": True})
    assert whole.choices[0].text == offline
    assert whole.choices[0].finish_reason == "length"
    assert whole.usage.completion_tokens == 12
    chunks = list(client.completions.create(model="tiny", prompt=PROMPT, max_tokens=12,
                                            temperature=0, stream=True,
                                            extra_body={"ignore_eos": True}))
    assert "".join(c.choices[0].text for c in chunks) == offline
    assert chunks[-1].choices[0].finish_reason == "length"


def test_chat_whole_and_streamed(client) -> None:
    messages = [{"role": "user", "content": "hello"}]
    whole = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8,
                                           temperature=0, extra_body={"ignore_eos": True})
    text = whole.choices[0].message.content
    assert whole.choices[0].message.role == "assistant" and whole.usage.completion_tokens == 8
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=8,
                                                 temperature=0, stream=True,
                                                 extra_body={"ignore_eos": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text


def test_n_seed_logprobs_and_stop(client, offline) -> None:
    out = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=6, n=2, seed=3,
                                    temperature=1.0, logprobs=2,
                                    extra_body={"ignore_eos": True})
    assert sorted(c.index for c in out.choices) == [0, 1]
    for choice in out.choices:
        assert len(choice.logprobs.tokens) == 6
        assert all(top for top in choice.logprobs.top_logprobs)  # equal texts share a key
        assert all(lp <= 0 for lp in choice.logprobs.token_logprobs)
    again = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=6, n=2, seed=3,
                                      temperature=1.0, extra_body={"ignore_eos": True})
    assert [c.text for c in again.choices] == [c.text for c in out.choices]
    stop = next(offline[i:i + 2] for i in range(3, len(offline)) if offline[i:i + 2].strip())
    cut = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=12, temperature=0,
                                    stop=[stop], extra_body={"ignore_eos": True})
    assert cut.choices[0].text == offline[: offline.find(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_disconnect_aborts_and_frees_blocks(server) -> None:
    body = {"prompt": PROMPT, "max_tokens": 100, "stream": True, "ignore_eos": True}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    aborted = _metric(server, 'vllm:request_success_total')  # any reason: a first sample
    with httpx.stream("POST", server + "/v1/completions", json=body, headers=headers,
                      timeout=30) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data:")
        assert _metric(server, "vllm:gpu_cache_usage_perc") > 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if (_metric(server, "vllm:gpu_cache_usage_perc") == 0
                and _metric(server, "vllm:num_requests_running") == 0):
            break
        time.sleep(0.2)
    assert _metric(server, "vllm:gpu_cache_usage_perc") == 0
    text = httpx.get(server + "/metrics", timeout=10).text
    assert 'finished_reason="abort"' in text and aborted >= 0


def test_concurrent_clients_are_all_answered(server) -> None:
    async def ask(i: int) -> str:
        async with openai.AsyncOpenAI(base_url=server + "/v1", api_key=API_KEY,
                                      max_retries=0) as aclient:
            out = await aclient.completions.create(model="tiny", prompt=f"{PROMPT} {i}",
                                                   max_tokens=5, temperature=0,
                                                   extra_body={"ignore_eos": True})
            return out.choices[0].finish_reason

    async def main() -> list[str]:
        return await asyncio.gather(*(ask(i) for i in range(4)))

    assert asyncio.run(main()) == ["length"] * 4


def test_full_queue_answers_503(server) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    long = {"prompt": PROMPT, "max_tokens": 100, "stream": True, "ignore_eos": True}
    with httpx.Client(timeout=30, headers=headers) as http:
        streams = [http.stream("POST", server + "/v1/completions", json=long)
                   for _ in range(6)]
        opened, lines = [], []
        try:
            # A request counts as waiting until its first token, so the two that fill the
            # running batch (max-num-seqs) must have had theirs before the next four arrive;
            # a line iterator is kept, as a discarded one closes its response: a disconnect,
            # which the server aborts, letting a waiting request start.
            for s in streams:
                opened.append(s.__enter__())
                assert opened[-1].status_code == 200
                lines.append(opened[-1].iter_lines())
                if len(opened) <= 2:
                    assert next(lines[-1]).startswith("data:")
            refused = http.post(server + "/v1/completions",
                                json={"prompt": PROMPT, "max_tokens": 2})
            assert refused.status_code == 503, refused.text
            error = refused.json()["error"]
            assert error["code"] == "queue_full"
            assert error["message"].startswith("4 requests are waiting"), error["message"]
            for stream in lines:  # the queue drains: every one runs to its end, none aborted
                events = [line for line in stream if line.startswith("data:")]
                assert events[-1] == "data: [DONE]"
                assert json.loads(events[-2][5:])["choices"][0]["finish_reason"] == "length"
        finally:
            for s in streams[:len(opened)]:
                s.__exit__(None, None, None)
    assert _metric(server, "vllm:num_requests_waiting") == 0
    after = httpx.post(server + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 2},
                       headers=headers, timeout=30)
    assert after.status_code == 200, after.text


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "nope", "prompt": "hi"}, 404, "model"),
        ({"prompt": "x" * 400}, 400, "prompt"),
        ({"prompt": "hi", "max_tokens": -3}, 400, "max_tokens"),
        ({"prompt": "hi", "max_tokens": 10**9}, 400, "max_tokens"),
        ({"prompt": "hi", "temperature": -1}, 400, "temperature"),
        ({"prompt": "hi", "top_p": 2}, 400, "top_p"),
        ({"prompt": "hi", "top_k": 2**70}, 400, "top_k"),
        ({"prompt": "hi", "seed": -1}, 400, "seed"),
        ({"prompt": "hi", "n": 0}, 400, "n"),
        ({"prompt": "hi", "logprobs": 99}, 400, "logprobs"),
        ({"prompt": "hi", "stop": [""]}, 400, "stop"),
        ({"prompt": [1, 2, 10**6]}, 400, "prompt"),
        ({"prompt": "hi", "max_tokens": "many"}, 400, "max_tokens"),
        ({"max_tokens": 3}, 400, "prompt"),
    ],
)
def test_bad_input_gets_openai_errors(server, body, status, param) -> None:
    response = httpx.post(server + "/v1/completions", json=body,
                          headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["message"] and error["type"]


def test_malformed_json_and_api_key(server, client) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    bad = httpx.post(server + "/v1/completions", content=b'{"prompt": ', headers=headers)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"
    wrong = openai.OpenAI(base_url=server + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.completions.create(model="tiny", prompt="hi", max_tokens=2)
    assert [m.id for m in client.models.list()] == ["tiny"]
    assert httpx.get(server + "/health").status_code == 200
    still = client.completions.create(model="tiny", prompt="hi", max_tokens=2)
    assert still.usage.completion_tokens >= 1


def test_bench_serve_against_the_server(server) -> None:
    result = bench_serve(server, random_prompts(4, 8, 0), 6, api_key=API_KEY,
                         max_concurrency=2, timeout_s=120)
    assert result.completed == 4 and result.failed == 0
    assert result.total_output_tokens == 24
    assert result.tpot["mean_ms"] > 0 and result.ttft["p99_ms"] >= result.ttft["median_ms"]
    assert "TPOT" in result.summary() and result.as_dict()["output_throughput"] > 0


def test_bench_serve_command(server, tmp_path: Path) -> None:
    out = tmp_path / "serve.json"
    run = CliRunner().invoke(main, ["bench", "serve", "--base-url", server, "--num-prompts", "3",
                                    "--input-len", "5", "--output-len", "4", "--request-rate",
                                    "50", "--api-key", API_KEY, "--output-json", str(out)])
    assert run.exit_code == 0, run.output
    assert "TTFT" in run.output and json.loads(out.read_text())["total_output_tokens"] == 12
    refused = CliRunner().invoke(main, ["bench", "serve", "--base-url", server,
                                        "--num-prompts", "1", "--api-key", "wrong"])
    assert refused.exit_code != 0 and "HTTP 401" in refused.output
