"""The engine loop: schedule -> run -> postprocess, one step at a time.

One engine per rank: a torchrun process, or a Ray actor of the Ray executor. Every rank of a
launch builds the same engine and makes the same ``generate`` calls.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from tqdm import tqdm

from solidx.runtime.block_manager import BlockManager
from solidx.runtime.config import Config
from solidx.runtime.distributed import get_tp_rank, init_distributed, peers_needed
from solidx.runtime.model_runner import ModelRunner
from solidx.runtime.outputs import CompletionOutput, RequestOutput
from solidx.runtime.sampling_params import SamplingParams
from solidx.runtime.scheduler import Scheduler
from solidx.runtime.sequence import Sequence, SequenceStatus
from solidx.runtime.tokenizer import eos_token_ids, get_tokenizer
from solidx.runtime.tunableop import configure_tunableop

logger = logging.getLogger(__name__)


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
        self.scheduler = Scheduler(config, block_manager, eos_token_ids(config, self.tokenizer))
        self.vocab_size = self.model_runner.vocab_size
        self._refused: list[Sequence] = []
        self._requests: dict[str, Sequence] = {}
        self._request_ids: dict[int, str] = {}

    def generate(
        self, prompts: list[str | list[int]], params: list[SamplingParams], use_tqdm: bool
    ) -> list[RequestOutput]:
        """Run every prompt (text, or token ids) with its sampling params to completion; the
        outputs in the order of ``prompts``. A progress bar on rank 0 when ``use_tqdm``."""
        done: dict[str, RequestOutput] = {}
        with peers_needed():
            for i, (prompt, sp) in enumerate(zip(prompts, params)):
                self.add_request(str(i), prompt, sp)
            show = use_tqdm and len(prompts) > 1 and get_tp_rank() == 0
            with tqdm(total=len(prompts), desc="generate", unit="req", disable=not show) as bar:
                while self.has_unfinished_requests():
                    finished = [out for out in self.step() if out.finished]
                    done.update((out.request_id, out) for out in finished)
                    bar.update(len(finished))
        return [done[str(i)] for i in range(len(prompts))]

    # -- vLLM's request API: request ids, partial outputs, abort ------------------------------

    def add_request(
        self, request_id: str, prompt: str | list[int], params: SamplingParams
    ) -> None:
        """Queue a prompt (text, or token ids) under ``request_id`` (unique among the unfinished
        requests). A prompt that cannot run finishes at the next step with finish_reason
        "error" and a message in ``RequestOutput.error``; the others are unaffected."""
        if request_id in self._requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        text = prompt if isinstance(prompt, str) else None
        token_ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        seq = Sequence(token_ids, params, text)
        self._requests[request_id] = seq
        self._request_ids[seq.seq_id] = request_id
        error = self._check(token_ids)
        if error is None:
            self.scheduler.add(seq)
            return
        logger.warning("request %s refused: %s", request_id, error)
        seq.status, seq.finish_reason, seq.error = SequenceStatus.FINISHED, "error", error
        seq.metrics.finished_time = time.perf_counter()
        self._refused.append(seq)

    def abort_request(self, request_id: str | Iterable[str]) -> None:
        """Drop unfinished requests (unknown or finished ids are ignored): their KV blocks are
        freed at once and they produce no further output."""
        ids = [request_id] if isinstance(request_id, str) else list(request_id)
        for rid in ids:
            seq = self._requests.pop(rid, None)
            if seq is None:
                continue
            del self._request_ids[seq.seq_id]
            if seq in self._refused:
                self._refused.remove(seq)
            elif not seq.is_finished:
                self.scheduler.abort(seq)

    def has_unfinished_requests(self) -> bool:
        return bool(self._refused) or self.scheduler.has_unfinished()

    def get_num_unfinished_requests(self) -> int:
        return len(self._requests)

    def step(self) -> list[RequestOutput]:
        """Run one batch; return an output for every request that progressed (a new token, or
        finished: refused ones included). ``token_ids`` are cumulative; ``text`` is set when
        the request finishes (and at every step for requests with stop strings)."""
        return [_output(request_id, seq) for request_id, seq in self._step()]

    def _step(self) -> list[tuple[str, Sequence]]:
        """(request id, sequence) of the requests that progressed in one batch; finished ones
        leave the engine's requests."""
        progressed, self._refused = self._refused, []
        if self.scheduler.has_unfinished():
            batch = self.scheduler.schedule()
            if not batch:
                raise RuntimeError(
                    "the scheduler could not schedule any waiting sequence (KV cache too small)"
                )
            tokens, logprobs = self.model_runner.run(batch)
            sampled = [item.seq for item in batch if item.samples]
            for seq, entry in zip(sampled, logprobs):
                if entry is not None:
                    seq.logprobs.append(entry)
            self.scheduler.postprocess(batch, tokens)
            for seq in sampled:
                if seq.params.stop_strings or seq.is_finished:
                    self._detokenize(seq)
            progressed += sampled
        result = []
        for seq in progressed:
            request_id = self._request_ids[seq.seq_id]
            if seq.is_finished:
                del self._requests[request_id], self._request_ids[seq.seq_id]
            result.append((request_id, seq))
        return result

    # -----------------------------------------------------------------------------------------

    def _detokenize(self, seq: Sequence) -> None:
        """Set ``seq.text``; at a stop string, cut the text there and finish the sequence."""
        text = self.tokenizer.decode(seq.output_token_ids, skip_special_tokens=True)
        cuts = [i for i in (text.find(s) for s in seq.params.stop_strings) if i >= 0]
        if cuts:
            text = text[: min(cuts)]
            if not seq.is_finished:
                self.scheduler.finish(seq, "stop")
        seq.text = text

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


def _output(request_id: str, seq: Sequence) -> RequestOutput:
    completion = CompletionOutput(
        0, seq.text, seq.output_token_ids, seq.finish_reason, seq.logprobs
    )
    return RequestOutput(
        request_id, seq.prompt, seq.prompt_token_ids, [completion], seq.is_finished,
        seq.metrics, seq.num_cached_tokens, seq.error,
    )
