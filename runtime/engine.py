"""The engine loop: schedule -> run -> postprocess, one step at a time, with vLLM's names:
``add_request``, ``step`` (the partial outputs of every request that progressed),
``abort_request``, ``has_unfinished_requests``.

One engine per rank: a torchrun process, or a Ray actor of the Ray executor. Every rank of a
launch builds the same engine and makes the same calls. A request that fails (refused at
admission, or an error inside a step) finishes with finish_reason "error" and a message in
``RequestOutput.error``; the engine and its other requests carry on. Under tensor parallelism
an error inside the model's forward is raised instead: one rank may have failed alone (a peer
lost, a device fault), and the ranks would no longer run the same steps.
"""

from __future__ import annotations

import itertools
import logging
import numbers
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Union

from tqdm import tqdm

from solidx.runtime.block_manager import BlockManager
from solidx.runtime.config import Config
from solidx.runtime.detokenizer import IncrementalDetokenizer
from solidx.runtime.distributed import (
    get_tp_rank,
    get_tp_size,
    init_distributed,
    peers_needed,
)
from solidx.runtime.layers.sampler import TokenLogprobs
from solidx.runtime.model_runner import LaunchedStep, ModelRunner
from solidx.runtime.outputs import RequestOutput
from solidx.runtime.sampling_params import RequestOutputKind, SamplingParams
from solidx.runtime.scheduler import ScheduledSeq, Scheduler
from solidx.runtime.sequence import Logprob, Request, Sequence
from solidx.runtime.tokenizer import eos_token_ids, get_tokenizer
from solidx.runtime.tunableop import configure_tunableop

logger = logging.getLogger(__name__)


@dataclass
class _Launched:
    """A step queued on the device: its batch, each sequence's request, the indices of the
    pending tokens it samples (``Scheduler.launched``), and the runner's handle."""

    batch: list[ScheduledSeq]
    owner: dict[int, Request]
    pending: list[int]
    step: LaunchedStep


PromptType = Union[str, list[int], dict[str, Any]]


def prompt_input(prompt: object) -> str | list[int]:
    """A prompt as text or token ids: a string, a list of int token ids, or a dict with
    ``prompt_token_ids`` or ``prompt``. Anything else (a float or bool id included) is a
    ValueError naming what is wrong."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, dict) and "prompt_token_ids" in prompt:
        return _token_ids(prompt["prompt_token_ids"])
    if isinstance(prompt, dict) and isinstance(prompt.get("prompt"), str):
        return prompt["prompt"]
    if isinstance(prompt, (list, tuple)):
        return _token_ids(prompt)
    raise ValueError(
        f"a prompt is a string or a dict with 'prompt_token_ids' or 'prompt', got {prompt!r}"
    )


def _token_ids(ids: object) -> list[int]:
    if not isinstance(ids, (list, tuple)):
        raise ValueError(f"prompt_token_ids must be a list of integers, got {ids!r}")
    for i, token in enumerate(ids):
        if isinstance(token, bool) or not isinstance(token, numbers.Integral):
            raise ValueError(f"prompt_token_ids[{i}] must be an integer token id, got {token!r}")
    return [int(t) for t in ids]


def check_params(params: SamplingParams, config: Config) -> None:
    """The engine's limits on ``params`` (``max_logprobs``), as ValueError naming the field."""
    limit = config.max_logprobs
    for name in ("logprobs", "prompt_logprobs"):
        value = getattr(params, name)
        if value is not None and limit != -1 and (value == -1 or value > limit):
            raise ValueError(
                f"{name}={value} is more than this engine's max_logprobs={limit} "
                "(raise max_logprobs, -1 for no limit)"
            )


class LLMEngine:
    """This rank's engine: it joins the launch's tensor-parallel group (nothing to join at
    ``tensor_parallel_size=1``), configures TunableOp, loads the model and sizes the KV cache."""

    def __init__(self, config: Config) -> None:
        init_distributed(config)
        configure_tunableop(config.torch_device)
        self.config = config
        self.tokenizer = get_tokenizer(config)
        self.model_runner = ModelRunner(config)
        block_manager = BlockManager(
            self.model_runner.num_kv_blocks, config.block_size, config.enable_prefix_caching
        )
        self.eos_token_ids = eos_token_ids(config, self.tokenizer)
        self.scheduler = Scheduler(config, block_manager, self.eos_token_ids)
        self.vocab_size = self.model_runner.vocab_size
        self.requests: dict[str, Request] = {}  # unfinished, by id
        self._of_seq: dict[int, Request] = {}
        self._refused: list[Request] = []
        self._ids = itertools.count()
        self._token_texts: dict[int, str] = {}
        self.async_scheduling = config.async_scheduling
        self._in_flight: _Launched | None = None  # the step launched, not yet finished

    # -- vLLM's engine API ---------------------------------------------------------------

    def add_request(
        self, request_id: str, prompt: PromptType, params: SamplingParams | None = None
    ) -> None:
        """Queue a prompt (text, token ids, or vLLM's prompt dict) with ``params.n``
        sequences. Bad params, a bad prompt or a request id already running raise ValueError
        and queue nothing; a prompt the model cannot run (empty, too long, ids outside the
        vocabulary) finishes at the next step with finish_reason "error"."""
        self._add(request_id, prompt, params)

    def abort_request(self, request_id: str | Iterable[str]) -> None:
        """Stop these requests (unknown or finished ids are ignored) and free their blocks;
        ``step`` returns nothing more for them."""
        for rid in [request_id] if isinstance(request_id, str) else list(request_id):
            request = self.requests.pop(rid, None)
            if request is not None:
                for seq in request.seqs:
                    if not seq.is_finished:
                        self.scheduler.finish(seq, "abort")
                    self._of_seq.pop(seq.seq_id, None)

    def has_unfinished_requests(self) -> bool:
        return bool(self._refused) or bool(self.requests)

    def get_num_unfinished_requests(self) -> int:
        return len(self.requests) + len(self._refused)

    def step(self) -> list[RequestOutput]:
        """Run one batch; the state of every request that progressed (new tokens, or finished),
        in order of arrival, shaped by its ``output_kind``: partial text and token ids (all so
        far, or only the new ones), ``finished`` once done; FINAL_ONLY requests only then."""
        outputs = []
        for request in self._step(partial=True):
            kind = request.params.output_kind
            if request.finished or kind is not RequestOutputKind.FINAL_ONLY:
                outputs.append(RequestOutput.from_request(request, kind is RequestOutputKind.DELTA))
        return outputs

    def check_params(self, params: SamplingParams) -> None:
        check_params(params, self.config)

    # -- offline generation --------------------------------------------------------------

    def generate(
        self, prompts: list[str | list[int]], params: list[SamplingParams], use_tqdm: bool
    ) -> list[RequestOutput]:
        """Run every prompt (text, or token ids) with its sampling params to completion; the
        outputs in the order of ``prompts``. A progress bar on rank 0 when ``use_tqdm``."""
        for sp in params:  # nothing is queued unless every request is valid
            self.check_params(sp)
        sources = [prompt_input(p) for p in prompts]
        with peers_needed():
            requests = [
                self._add(f"generate-{next(self._ids)}", source, sp)
                for source, sp in zip(sources, params)
            ]
            show = use_tqdm and len(requests) > 1 and get_tp_rank() == 0
            with tqdm(total=len(requests), desc="generate", unit="req", disable=not show) as bar:
                while self.has_unfinished_requests():
                    bar.update(sum(request.finished for request in self._step()))
        return [RequestOutput.from_request(request) for request in requests]

    # -- internals -----------------------------------------------------------------------

    def _add(self, request_id: str, prompt: PromptType, params: SamplingParams | None) -> Request:
        if not isinstance(request_id, str):
            raise ValueError(f"request_id must be a string, got {request_id!r}")
        if request_id in self.requests:
            raise ValueError(f"request_id {request_id!r} is already running")
        params = SamplingParams() if params is None else params
        if not isinstance(params, SamplingParams):
            raise ValueError(f"params must be a SamplingParams, got {type(params).__name__}")
        self.check_params(params)
        source = prompt_input(prompt)
        text = source if isinstance(source, str) else None
        token_ids = self.tokenizer.encode(source) if isinstance(source, str) else source
        first = Sequence(token_ids, params, text, 0, None, self.eos_token_ids)
        seqs = [first] + [
            Sequence(token_ids, params, text, i, first, self.eos_token_ids)
            for i in range(1, params.n)
        ]
        request = Request(request_id, seqs)
        error = self._check(token_ids)
        if error is not None:
            logger.warning("request %s refused: %s", request_id, error)
            request.error = error
            for seq in seqs:
                self.scheduler.finish(seq, "error")
            self._refused.append(request)
            return request
        self.requests[request_id] = request
        for seq in seqs:
            self._of_seq[seq.seq_id] = request
            self.scheduler.add(seq)
        return request

    def _step(self, partial: bool = False) -> list[Request]:
        """One batch; the requests that progressed (refused ones first). ``partial``: keep the
        text of unfinished sequences up to date (for ``step``'s outputs) unless FINAL_ONLY.
        With asynchronous scheduling the next batch is launched before the one in flight is
        finished (its device work runs while the host finishes the other and schedules), so
        the requests returned are those of the batch launched one call earlier."""
        progressed, self._refused = self._refused, []
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None and self._needs_host_tokens():
            progressed += self._finish(in_flight, partial)
            in_flight = None
        launched = None
        if self.scheduler.has_unfinished():
            batch = self.scheduler.schedule()
            if batch:
                launched = self._launch(batch, in_flight)
            elif in_flight is None:  # cannot happen while one sequence fits the cache
                request = self._of_seq[self.scheduler.waiting[0].seq_id]
                self._fail(request, "the scheduler could not fit it in the KV cache")
                return progressed + [request]
        if in_flight is not None:
            progressed += self._finish(in_flight, partial)
        if isinstance(launched, list):  # the launch failed: these requests failed
            return progressed + launched
        if launched is not None:
            if self.async_scheduling:
                self._in_flight = launched
            else:
                progressed += self._finish(launched, partial)
        return progressed

    def _needs_host_tokens(self) -> bool:
        """Whether a sequence's sampling reads its tokens' values on the host (penalties), so
        that no step may be launched while one is in flight."""
        return any(seq.params.has_penalties
                   for seq in itertools.chain(self.scheduler.running, self.scheduler.waiting))

    def _launch(self, batch: list[ScheduledSeq], previous: _Launched | None
                ) -> _Launched | list[Request]:
        """Queue ``batch`` on the device (its pending input tokens from ``previous``); the
        requests that failed if that raised."""
        owner = {item.seq.seq_id: self._of_seq[item.seq.seq_id] for item in batch}
        try:
            step = self.model_runner.launch(batch, previous.step if previous else None)
        except Exception as exc:
            return self._step_failed(exc, owner)
        return _Launched(batch, owner, self.scheduler.launched(batch), step)

    def _finish(self, launched: _Launched, partial: bool) -> list[Request]:
        """Read a launched step's results and apply them; the requests that progressed."""
        batch, owner = launched.batch, launched.owner
        try:
            result = launched.step.collect()
        except Exception as exc:
            return self._step_failed(exc, owner)
        sampled = [item.seq for item in batch if item.samples]
        live = [not seq.is_finished for seq in sampled]  # not aborted, not stopped meanwhile
        self.scheduler.resolve(batch, launched.pending, result.token_ids)
        for seq_id, entries in result.prompt_logprobs.items():
            request = owner[seq_id]
            self._guard(request, self._add_prompt_logprobs, request.seqs[0], entries)
        for seq, entry, alive in zip(sampled, result.logprobs, live):
            if alive and owner[seq.seq_id].error is None:
                self._guard(owner[seq.seq_id], self._advance, seq, entry, partial)
        stepped = _unique(owner[seq.seq_id] for seq, alive in zip(sampled, live) if alive)
        for request in stepped:
            if request.finished:
                self._forget(request)
        return stepped

    def _step_failed(self, exc: Exception, owner: dict[int, Request]) -> list[Request]:
        """A step raised: its requests fail and the engine goes on (under tensor parallelism
        it raises: a rank may have failed alone, and the ranks no longer agree)."""
        if get_tp_size() > 1:
            raise exc
        logger.exception("an engine step failed", exc_info=exc)
        failed = _unique(owner.values())
        for request in failed:
            self._fail(request, f"the engine step failed: {type(exc).__name__}: {exc}")
        return failed

    def _advance(self, seq: Sequence, entry: TokenLogprobs | None, partial: bool) -> None:
        """Record a sampled token's logprobs; set the final text once done, else read the new
        text when stop strings or ``partial`` outputs need it."""
        params = seq.params
        if entry is not None and seq.logprobs is not None:
            seq.logprobs.append(self._logprob_dict(entry))
            seq.cumulative_logprob = (seq.cumulative_logprob or 0.0) + entry.logprob
        if seq.is_finished:
            self._final_text(seq)
        elif params.stop_strings or (
            partial and params.output_kind is not RequestOutputKind.FINAL_ONLY
        ):
            self._read_text(seq)

    def _add_prompt_logprobs(self, seq: Sequence, entries: list[TokenLogprobs]) -> None:
        if seq.prompt_logprobs is not None:
            seq.prompt_logprobs.extend(self._logprob_dict(entry) for entry in entries)

    def _logprob_dict(self, entry: TokenLogprobs) -> dict[int, Logprob]:
        """vLLM's form: the chosen token with its rank, then the top tokens ranked 1, 2, ..."""
        result = {entry.token_id: Logprob(entry.logprob, entry.rank, self._text(entry.token_id))}
        for rank, (token, value) in enumerate(zip(entry.top_ids, entry.top_logprobs), 1):
            if token not in result:
                result[token] = Logprob(value, rank, self._text(token))
        return result

    def _text(self, token_id: int) -> str:
        text = self._token_texts.get(token_id)
        if text is None:
            text = self._token_texts[token_id] = self.tokenizer.decode(
                [token_id], skip_special_tokens=False
            )
        return text

    def _read_text(self, seq: Sequence) -> None:
        """Decode the new tokens of an unfinished sequence and search the new text for stop
        strings; at one, cut the text there and finish the sequence with it as stop reason.
        While it runs, ``seq.text`` leaves out the last characters a stop string could still
        claim (unless ``include_stop_str_in_output``), so that no partial output shows them."""
        params = seq.params
        if seq.detokenizer is None:
            seq.detokenizer = IncrementalDetokenizer(
                self.tokenizer, params.skip_special_tokens, seq.num_prompt_tokens
            )
        seq.detokenizer.update(seq.known_token_ids)
        text = seq.detokenizer.text
        if self._cut_at_stop(seq, text):
            return
        held = 0
        if params.stop_strings and not params.include_stop_str_in_output:
            held = max(map(len, params.stop_strings)) - 1
        seq.text = text[: len(text) - held]

    def _final_text(self, seq: Sequence) -> None:
        """Set a finished sequence's text: its whole output decoded (without a final EOS or stop
        token unless ``include_stop_str_in_output``), cut at a stop string not yet searched."""
        params = seq.params
        tokens = seq.output_token_ids
        if seq.finish_reason == "stop" and not params.include_stop_str_in_output:
            tokens = tokens[:-1]
        text = self.tokenizer.decode(tokens, skip_special_tokens=params.skip_special_tokens)
        if seq.finish_reason == "stop" or not self._cut_at_stop(seq, text):
            seq.text = text

    def _cut_at_stop(self, seq: Sequence, text: str) -> bool:
        """From ``min_tokens`` outputs on, search ``text`` past what earlier calls searched for
        the first stop string; at one, set ``seq.text`` to ``text`` cut there (after the string
        with ``include_stop_str_in_output``) and finish the sequence with the string as stop
        reason. Whether it found one."""
        params = seq.params
        searched = seq.num_text_checked
        seq.num_text_checked = len(text)
        if not params.stop_strings or len(seq.output_token_ids) < params.min_tokens:
            return False
        start = max(0, searched - max(map(len, params.stop_strings)) + 1)
        hits = [(text.find(s, start), s) for s in params.stop_strings]
        found = min((hit for hit in hits if hit[0] >= 0), default=None)
        if found is None:
            return False
        at, stop = found
        seq.text = text[: at + len(stop)] if params.include_stop_str_in_output else text[:at]
        if seq.is_finished:
            seq.finish_reason, seq.stop_reason = "stop", stop
        else:
            self.scheduler.finish(seq, "stop", stop)
        return True

    def _guard(self, request: Request, work: Any, *args: Any) -> None:
        """Run ``work(*args)``; if it raises, fail ``request`` alone."""
        try:
            work(*args)
        except Exception as exc:
            logger.exception("request %s failed", request.request_id)
            self._fail(request, f"{type(exc).__name__}: {exc}")

    def _fail(self, request: Request, message: str) -> None:
        """Finish every sequence of ``request`` with finish_reason "error" and free its blocks."""
        logger.warning("request %s failed: %s", request.request_id, message)
        request.error = message
        for seq in request.seqs:
            if not seq.is_finished:
                self.scheduler.finish(seq, "error")
            elif seq.finish_reason != "error":
                seq.finish_reason, seq.stop_reason = "error", None
        self._forget(request)

    def _forget(self, request: Request) -> None:
        self.requests.pop(request.request_id, None)
        for seq in request.seqs:
            self._of_seq.pop(seq.seq_id, None)

    def _check(self, token_ids: list[int]) -> str | None:
        limit = self.config.max_model_len
        if not token_ids:
            return "the prompt is empty"
        if len(token_ids) > limit:
            return f"the prompt has {len(token_ids)} tokens, more than max_model_len={limit}"
        bad = [t for t in token_ids if not 0 <= t < self.vocab_size]
        if bad:
            return f"token id {bad[0]} is outside the vocabulary (0..{self.vocab_size - 1})"
        return None


def _unique(requests: Iterable[Request]) -> list[Request]:
    """``requests`` without repeats, in first-seen order."""
    return list({id(r): r for r in requests}.values())
