"""The engine loop: schedule -> run -> postprocess, one step at a time.

One engine per rank: a torchrun process, or a Ray actor of the Ray executor. Every rank of a
launch builds the same engine and makes the same ``generate`` calls.
"""

from __future__ import annotations

import logging
import time

from tqdm import tqdm

from solidx.runtime.block_manager import BlockManager
from solidx.runtime.config import Config
from solidx.runtime.distributed import get_tp_rank, init_distributed, peers_needed
from solidx.runtime.model_runner import ModelRunner
from solidx.runtime.outputs import RequestOutput
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

    def generate(
        self, prompts: list[str | list[int]], params: list[SamplingParams], use_tqdm: bool
    ) -> list[RequestOutput]:
        """Run every prompt (text, or token ids) with its sampling params to completion; the
        outputs in the order of ``prompts``. A progress bar on rank 0 when ``use_tqdm``."""
        with peers_needed():
            seqs = [self.add_request(p, sp) for p, sp in zip(prompts, params)]
            show = use_tqdm and len(seqs) > 1 and get_tp_rank() == 0
            with tqdm(total=len(seqs), desc="generate", unit="req", disable=not show) as bar:
                while self.has_unfinished_requests():
                    bar.update(len(self.step()))
        return [RequestOutput.from_seq(seq) for seq in seqs]

    def add_request(self, prompt: str | list[int], params: SamplingParams) -> Sequence:
        """Queue a prompt (text, or token ids). A prompt that cannot run is finished at once with
        finish_reason "error" and a message in ``seq.error``; the others are unaffected."""
        text = prompt if isinstance(prompt, str) else None
        token_ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        seq = Sequence(token_ids, params, text)
        error = self._check(token_ids)
        if error is None:
            self.scheduler.add(seq)
            return seq
        logger.warning("request %d refused: %s", seq.seq_id, error)
        seq.status, seq.finish_reason, seq.error = SequenceStatus.FINISHED, "error", error
        seq.metrics.finished_time = time.perf_counter()
        self._refused.append(seq)
        return seq

    def has_unfinished_requests(self) -> bool:
        return bool(self._refused) or self.scheduler.has_unfinished()

    def step(self) -> list[Sequence]:
        """Run one batch; return the sequences that finished (refused ones included)."""
        finished, self._refused = self._refused, []
        if not self.scheduler.has_unfinished():
            return finished
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
        finished += self.scheduler.postprocess(batch, tokens)
        for seq in sampled:
            if seq.params.stop_strings or seq.is_finished:
                self._detokenize(seq)
                if seq.is_finished and seq not in finished:
                    finished.append(seq)
        return finished

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
