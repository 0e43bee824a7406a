"""Many sequences at once through one llama.cpp context: continuous batching for the embedded CPU backend.

llama-cpp-python's ``create_chat_completion`` decodes one sequence at a time, which leaves most of a CPU's
arithmetic idle: a step of one token costs nearly as much as a step of sixteen, because reading the weights
dominates. Here every (prompt, sample) of a ``generate`` call is a job; up to ``parallel`` of them decode
together, one token each per ``llama_decode``, and a finished job's slot takes the next job at once. The samples
of one prompt that start together share one prefill (the prompt's KV cells are copied).

Sample ``j`` of a prompt with seed ``s`` draws from the sampler chain llama-cpp-python's ``create_chat_completion``
builds with its defaults (top-k 40, top-p, min-p 0.05, temperature, then a draw seeded ``s + j``), so both paths
sample from the same distribution. A sequence's logits can differ in their last bits
with what else is in the batch, as on vLLM, so a sample is reproducible for a given run, not bit for bit across
batch shapes; the progress store keeps what was generated, so a resumed run never generates it again.
"""

from __future__ import annotations

import ctypes
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from crescent_distilabel.llms import Interrupted

# llama-cpp-python's create_chat_completion defaults, which the one-at-a-time path runs with
TOP_K = 40
MIN_P = 0.05


@dataclass
class Sample:
    """One finished sequence."""

    text: str
    prompt_tokens: int
    output_tokens: int
    truncated: bool


@dataclass
class _Job:
    prompt: int  # index of the prompt
    sample: int  # index of the sample within the prompt
    seed: int


@dataclass
class _Slot:
    job: _Job
    sampler: Any
    logits_index: int = -1  # row of the last decode's logits that belong to this sequence
    position: int = 0
    tokens: list[int] = field(default_factory=list)
    pieces: bytearray = field(default_factory=bytearray)


class BatchedLlamaCpp:
    """A llama.cpp context of ``parallel`` sequences over an already loaded ``llama_cpp.Llama`` model.

    Args:
        llama: the loaded model (its weights are shared, not copied).
        parallel: how many sequences decode together.
        n_ctx: the context length of each sequence (prompt plus output).
        n_threads: CPU threads for decoding.
    """

    def __init__(self, llama: Any, parallel: int, n_ctx: int, n_threads: int) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self._llama = llama
        self.parallel = parallel
        self.n_ctx = n_ctx
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = parallel * n_ctx
        params.n_batch = max(512, parallel)
        params.n_ubatch = max(512, parallel)
        params.n_seq_max = parallel
        params.n_threads = params.n_threads_batch = n_threads
        # a KV stream per sequence, each of n_ctx cells: a sequence never waits for room, and attention reads
        # only its own cells (one unified pool would also make llama.cpp warn of n_ctx above the training length)
        params.kv_unified = False
        self._ctx = llama_cpp.llama_init_from_model(llama.model, params)
        if not self._ctx:
            raise RuntimeError(f"llama.cpp could not create a context for {parallel} sequences of {n_ctx} tokens")
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self._vocab = llama_cpp.llama_model_get_vocab(llama.model)
        self._batch = llama_cpp.llama_batch_init(params.n_batch, 0, parallel)
        self._n_batch = params.n_batch

    def close(self) -> None:
        """Free the context and the batch (the model stays with its owner)."""
        if self._ctx:
            self._lib.llama_batch_free(self._batch)
            self._lib.llama_free(self._ctx)
            self._ctx = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # at interpreter exit the library may be gone already; the OS frees the memory
            pass

    def _sampler(self, seed: int, temperature: float, top_p: float) -> Any:
        lib = self._lib
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        if temperature <= 0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
            return chain
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_k(TOP_K))
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(top_p, 1))
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_min_p(MIN_P, 1))
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(temperature))
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        return chain

    def _piece(self, token: int) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = self._lib.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self._lib.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        return buf.raw[:n]

    def _decode(self, entries: list[tuple[int, int, int, bool]]) -> None:
        """Decode (token, position, sequence, wants logits) entries, in chunks of the batch size."""
        batch = self._batch
        for start in range(0, len(entries), self._n_batch):
            chunk = entries[start : start + self._n_batch]
            for i, (token, pos, seq, logits) in enumerate(chunk):
                batch.token[i] = token
                batch.pos[i] = pos
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = seq
                batch.logits[i] = logits
            batch.n_tokens = len(chunk)
            code = self._lib.llama_decode(self._ctx, batch)
            if code != 0:
                raise RuntimeError(f"llama_decode failed ({code}): the context is full or the batch is invalid")

    def generate(
        self,
        prompts: list[list[int]],
        samples: int,
        seeds: list[int],
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        stop: list[str] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[list[Sample]]:
        """``samples`` sequences for each tokenised prompt; sample ``j`` of prompt ``i`` is seeded ``seeds[i] + j``.

        Returns, per prompt, its samples in order. ``should_stop`` is asked before every decode step: a call of
        many long sequences takes minutes, and a stopping run must not wait for it (raises ``Interrupted``).
        """
        lib = self._lib
        for tokens in prompts:
            if len(tokens) + 1 > self.n_ctx:
                raise ValueError(f"a prompt of {len(tokens)} tokens does not fit a context of {self.n_ctx}")
        budgets = [min(max_new_tokens, self.n_ctx - len(t)) for t in prompts]
        queue = deque(_Job(i, j, seeds[i] + j) for i in range(len(prompts)) for j in range(samples))
        results: list[list[Sample | None]] = [[None] * samples for _ in prompts]
        slots: dict[int, _Slot] = {}
        free = list(range(self.parallel - 1, -1, -1))
        lib.llama_memory_clear(self._memory, True)
        while queue or slots:
            if should_stop is not None and should_stop():
                left = len(queue) + len(slots)
                raise Interrupted(f"stopped with {left} of {len(prompts) * samples} sequences unfinished")
            # Sample first, from the logits of the decode just done: any later decode (a prefill) replaces them.
            entries = []
            for seq, slot in list(slots.items()):
                token = lib.llama_sampler_sample(slot.sampler, self._ctx, slot.logits_index)
                done = bool(lib.llama_vocab_is_eog(self._vocab, token))
                if not done:
                    slot.tokens.append(token)
                    slot.pieces += self._piece(token)
                hit_stop = bool(stop) and _ends_with_stop(slot.pieces, stop or [])
                cut = not done and not hit_stop and len(slot.tokens) >= budgets[slot.job.prompt]
                if done or hit_stop or cut:
                    text = slot.pieces.decode("utf-8", errors="ignore")
                    if hit_stop:
                        text = _strip_stop(text, stop or [])
                    results[slot.job.prompt][slot.job.sample] = Sample(
                        text.strip(), len(prompts[slot.job.prompt]), len(slot.tokens), cut
                    )
                    lib.llama_sampler_free(slot.sampler)
                    lib.llama_memory_seq_rm(self._memory, seq, -1, -1)
                    del slots[seq]
                    free.append(seq)
                else:
                    entries.append((seq, token))
            # Then fill the freed slots (their prefill is decoded here) and decode one token of every sequence.
            entries += self._admit(queue, slots, free, prompts, temperature, top_p)
            batch = []
            for seq, token in entries:
                slot = slots[seq]
                slot.logits_index = len(batch)
                batch.append((token, slot.position, seq, True))
                slot.position += 1
            if batch:
                self._decode(batch)  # at most `parallel` entries: one chunk, so the logits rows stay valid
        return [[s for s in row if s is not None] for row in results]

    def _admit(
        self,
        queue: deque[_Job],
        slots: dict[int, _Slot],
        free: list[int],
        prompts: list[list[int]],
        temperature: float,
        top_p: float,
    ) -> list[tuple[int, int]]:
        """Start queued jobs in free slots: the samples of a prompt that start together share one prefill of all
        but its last token (copied to their sequences). Returns (sequence, last prompt token) for the step batch."""
        started: dict[int, list[int]] = {}
        pending: list[tuple[int, int]] = []
        while queue and free:
            job = queue.popleft()
            seq = free.pop()
            tokens = prompts[job.prompt]
            slot = _Slot(job, self._sampler(job.seed, temperature, top_p), position=len(tokens) - 1)
            slots[seq] = slot
            pending.append((seq, tokens[-1]))
            started.setdefault(job.prompt, []).append(seq)
        entries = []
        for prompt, seqs in started.items():
            entries += [(t, p, seqs[0], False) for p, t in enumerate(prompts[prompt][:-1])]
        if entries:
            self._decode(entries)
        for seqs in started.values():
            for seq in seqs[1:]:
                self._lib.llama_memory_seq_cp(self._memory, seqs[0], seq, -1, -1)
        return pending


def _ends_with_stop(pieces: bytearray, stop: list[str]) -> bool:
    tail = bytes(pieces[-64:]).decode("utf-8", errors="ignore")
    return any(s in tail for s in stop)


def _strip_stop(text: str, stop: list[str]) -> str:
    cut = min((text.find(s) for s in stop if s in text), default=len(text))
    return text[:cut]
