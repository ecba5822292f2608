"""Incremental detokenization against whole decodes: multi-byte text through the byte and a BPE
tokenizer, random byte streams (broken and split UTF-8, special tokens, ids that are no byte),
and the engine's stop strings and streamed outputs built on it (one shared detokenizer)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from solidx.runtime.config import Config
from solidx.runtime.detokenizer import HOLD, REPLACEMENT, IncrementalDetokenizer
from solidx.runtime.engine import LLMEngine
from solidx.runtime.sampling_params import RequestOutputKind, SamplingParams
from solidx.runtime.tokenizer import ByteTokenizer

from tests.checkpoints import train_tokenizer

TEXT = "Héllo wörld, the quick brown fox — 東京 jumps! 🦊 naïve café, ünïcödé ✓ " * 3


def _held_back(text: str) -> str:
    """``text`` less the trailing U+FFFD the detokenizer may hold back."""
    n = 0
    while n < HOLD and n < len(text) and text[-1 - n] == REPLACEMENT:
        n += 1
    return text[: len(text) - n]


def _check_stream(tokenizer, ids: list[int], skip_special_tokens: bool, first: int = 0) -> None:
    """After every token, the text equals a whole decode of the output so far (less what may
    be held back), and the pieces returned add up to it."""
    detok = IncrementalDetokenizer(tokenizer, skip_special_tokens, first)
    pieces = []
    for end in range(first + 1, len(ids) + 1):
        pieces.append(detok.update(ids[:end]))
        whole = tokenizer.decode(ids[first:end], skip_special_tokens=skip_special_tokens)
        assert detok.text == _held_back(whole), (ids[first:end], detok.text, whole)
    assert "".join(pieces) == detok.text


@pytest.fixture(scope="module")
def bpe(tmp_path_factory: pytest.TempPathFactory):
    return train_tokenizer(tmp_path_factory.mktemp("bpe"))


@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_multibyte_text_equals_whole_decode_at_every_token(kind, bpe) -> None:
    tokenizer = ByteTokenizer(300, 1, 2) if kind == "byte" else bpe
    ids = tokenizer.encode(TEXT)
    assert len(ids) > 40  # the window restarts several times
    _check_stream(tokenizer, ids, skip_special_tokens=True)
    detok = IncrementalDetokenizer(tokenizer, True)
    for end in range(1, len(ids) + 1):
        detok.update(ids[:end])
    assert detok.text == tokenizer.decode(ids, skip_special_tokens=True)  # nothing held


def test_the_output_starts_after_the_prompt(bpe) -> None:
    prompt = bpe.encode("The quick brown")
    output = bpe.encode(" fox — 東京 naïve", add_special_tokens=False)
    _check_stream(bpe, prompt + output, skip_special_tokens=True, first=len(prompt))


@pytest.mark.parametrize("skip_special_tokens", [True, False])
def test_random_byte_streams_equal_whole_decodes(skip_special_tokens: bool) -> None:
    tokenizer = ByteTokenizer(300, 1, 2)
    offset = ByteTokenizer.OFFSET
    ascii_ = [offset + b for b in b"ab ,."]
    leads = [offset + b for b in (0xC3, 0xE2, 0xF0, 0xED)]
    continuation = [offset + b for b in (0x80, 0x82, 0x9F, 0xA9, 0xAC, 0xBF)]
    others = [1, 2, 280, 299]  # BOS, EOS, ids that are no byte
    rng = random.Random(0)
    for _ in range(150):
        pools = rng.choices([ascii_, leads, continuation, others], [3, 2, 4, 2], k=60)
        _check_stream(tokenizer, [rng.choice(pool) for pool in pools], skip_special_tokens)


def test_random_bpe_streams_equal_whole_decodes(bpe) -> None:
    rng = random.Random(1)
    for _ in range(60):
        _check_stream(bpe, [rng.randrange(len(bpe)) for _ in range(50)], True)


@pytest.fixture(scope="module")
def engine() -> LLMEngine:
    # dummy weights and the byte tokenizer: the greedy outputs are bytes of every kind
    config = Config(model="tiny-llama", load_format="dummy", device="cpu", dtype="float32",
                    max_model_len=128)
    return LLMEngine(config)


def _run(engine: LLMEngine, prompt: list[int], params: SamplingParams) -> list:
    engine.add_request("r", prompt, params)
    outputs = []
    while engine.has_unfinished_requests():
        outputs += engine.step()
    return outputs


PROMPTS = [[1, 40 + i, 50, 60 + i] for i in range(6)]


def _greedy(**kwargs) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=60, ignore_eos=True, **kwargs)


def test_streamed_deltas_add_up_to_the_final_text(engine) -> None:
    for prompt in PROMPTS:
        (final,) = engine.generate([prompt], [_greedy()], use_tqdm=False)
        out = final.outputs[0]
        assert out.text == engine.tokenizer.decode(out.token_ids)
        deltas = _run(engine, prompt, _greedy(output_kind=RequestOutputKind.DELTA))
        assert "".join(d.outputs[0].text for d in deltas) == out.text
        assert [t for d in deltas for t in d.outputs[0].token_ids] == out.token_ids
        assert [d.finished for d in deltas] == [False] * (len(deltas) - 1) + [True]
        cumulative = _run(engine, prompt, _greedy())
        assert all(out.text.startswith(c.outputs[0].text) for c in cumulative)
        assert cumulative[-1].outputs[0].text == out.text
        (last,) = _run(engine, prompt, _greedy(output_kind=RequestOutputKind.FINAL_ONLY))
        assert last.finished and last.outputs[0].text == out.text


def _stop_across_tokens(text: str) -> str:
    """Two characters of ``text`` (each token of the byte tokenizer is at most one), the first
    non-ASCII pair when there is one, neither of them U+FFFD."""
    pairs = [text[i:i + 2] for i in range(len(text) - 1) if REPLACEMENT not in text[i:i + 2]]
    pairs = [p for p in pairs if p.strip()]
    return next((p for p in pairs if not p.isascii()), pairs[len(pairs) // 2])


@pytest.mark.parametrize("include", [False, True])
def test_stop_strings_across_tokens_cut_stream_and_final_text_alike(engine, include) -> None:
    for prompt in PROMPTS[:3]:
        (plain,) = engine.generate([prompt], [_greedy()], use_tqdm=False)
        text = plain.outputs[0].text
        stop = _stop_across_tokens(text)
        cut = text.find(stop) + (len(stop) if include else 0)
        params = _greedy(stop=[stop], include_stop_str_in_output=include)
        (final,) = engine.generate([prompt], [params], use_tqdm=False)
        assert final.outputs[0].text == text[:cut]
        assert final.outputs[0].finish_reason == "stop" and final.outputs[0].stop_reason == stop
        kind = RequestOutputKind.DELTA
        deltas = _run(engine, prompt, _greedy(stop=[stop], include_stop_str_in_output=include,
                                              output_kind=kind))
        assert "".join(d.outputs[0].text for d in deltas) == text[:cut]  # nothing taken back
        assert deltas[-1].outputs[0].stop_reason == stop


def test_min_tokens_defers_stop_strings(engine) -> None:
    prompt = PROMPTS[0]
    (plain,) = engine.generate([prompt], [_greedy()], use_tqdm=False)
    tokens, text = plain.outputs[0].token_ids, plain.outputs[0].text
    stop = _stop_across_tokens(text)
    at = text.find(stop)
    first = next(k for k in range(len(tokens)) if stop in engine.tokenizer.decode(tokens[:k]))
    assert first + 2 <= 60
    for kind in (RequestOutputKind.FINAL_ONLY, RequestOutputKind.DELTA):
        params = _greedy(stop=[stop], min_tokens=first + 2, output_kind=kind)
        outputs = _run(engine, prompt, params)
        got = "".join(o.outputs[0].text for o in outputs)
        assert len(got) > at  # the first occurrence came before min_tokens: no stop there
        later = text.find(stop, at + 1)
        assert got == (text[:later] if outputs[-1].outputs[0].stop_reason == stop else text)


def test_skip_special_tokens_false_keeps_them_in_the_text(engine) -> None:
    prompt = PROMPTS[1]
    params = _greedy(skip_special_tokens=False, output_kind=RequestOutputKind.DELTA)
    deltas = _run(engine, prompt, params)
    tokens = [t for d in deltas for t in d.outputs[0].token_ids]
    whole = engine.tokenizer.decode(tokens, skip_special_tokens=False)
    assert "".join(d.outputs[0].text for d in deltas) == whole


def test_tokens_are_not_decoded_each_step_without_stop_strings(engine, monkeypatch,
                                                                tmp_path: Path) -> None:
    calls: list[int] = []
    real = engine.tokenizer.decode

    def counting(ids, skip_special_tokens=True):
        calls.append(len(ids))
        return real(ids, skip_special_tokens=skip_special_tokens)

    monkeypatch.setattr(engine.tokenizer, "decode", counting)
    engine.generate(PROMPTS[:2], [_greedy()] * 2, use_tqdm=False)
    assert calls == [60, 60]  # one whole decode per sequence, at its end
    calls.clear()
    engine.generate(PROMPTS[:1], [_greedy(stop=["\x00never"])], use_tqdm=False)
    assert max(calls[:-1]) <= 16 and calls[-1] == 60  # short windows, then the whole
