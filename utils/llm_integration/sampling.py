"""Grammar-constrained sampling that checks one token per step instead of the whole vocabulary.

llama-cpp-python 0.3.36 (``Llama._init_sampler``) puts the grammar sampler first in its chain,
so every generated token checks all of the vocabulary (49k tokens for SmolLM2) against the
grammar: on a small model that costs about as much as the forward pass. llama.cpp's own
``common_sampler_sample`` (``common/sampling.cpp``) does it the other way round, and so does
:class:`RejectionGrammarSampler`:

1. sample with the ordinary chain (penalties, top-k/top-p, temperature or greedy), no grammar;
2. check only the chosen token against the grammar;
3. when the grammar rejects it, resample: the grammar over the full candidates, then the chain.
   Greedy decoding first checks only the best candidates by logit (the best one allowed is the
   one the full pass would pick): a small model's first choice misses the JSON punctuation the
   grammar wants on about half the steps, so the resampling pass has to be cheap too.

The chosen token is then accepted by both the grammar and the chain. Greedy decoding picks
exactly what the grammar-first chain picks (the best token the grammar allows, whichever
order the two are applied in), so replies, and the replay cache built from them, do not change.

:func:`llama_class` is the ``llama_cpp.Llama`` subclass every load in this layer uses. It
hands grammar calls this sampler; runs batches too small to split (a short cue after a cached
prefix) on the decoding thread count, and long ones on the prompt count only while other
processes leave the cores free (:mod:`utils.llm_integration.cpu_load`); saves and restores
cache states without the logits buffer it never reads (100 MB per state for a 49k
vocabulary); and times the sampler and the state cache and counts the sampled tokens
(``Llama.timings``), which ``CallMetrics`` reports.

Speculative decoding with prompt-lookup drafts was measured here and left out: verifying a
draft in a batch saved 13% of generation time, but batched evaluation rounds differently from
one token at a time, and greedy replies changed.
"""

from __future__ import annotations

import ctypes
import functools
import math
import time
from typing import Any

import numpy as np

from utils.llm_integration.cpu_load import OtherLoad, batch_threads, usable_cores

GREEDY_PROBES = (64, 2048)  # best candidates the grammar checks before the whole vocabulary


class RejectionGrammarSampler:
    """Stands in for ``llama_cpp._internals.LlamaSampler`` in ``Llama.sample`` (``sample``,
    ``accept``, ``reset``, ``close``) when a call has a grammar."""

    def __init__(self, llama: Any, chain: Any, grammar: Any, *, greedy: bool = False) -> None:
        from llama_cpp import llama_cpp as lib

        self.greedy = greedy  # the chain is penalties + greedy (temperature 0)
        self._lib = lib
        self._llama = llama
        self._chain = chain  # a LlamaSampler built without the grammar
        self._grammar = lib.llama_sampler_init_grammar(
            llama._model.vocab, grammar._grammar.encode("utf-8"), grammar._root.encode("utf-8")
        )
        if not self._grammar:
            raise ValueError("llama.cpp rejected the grammar")
        self._n_vocab = llama.n_vocab()
        self._data = (lib.llama_token_data * self._n_vocab)()
        self._view = np.ctypeslib.as_array(self._data)  # fields id, logit, p
        self._ids = np.arange(self._n_vocab, dtype=np.int32)
        self._cur = lib.llama_token_data_array(self._data, self._n_vocab, -1, False)
        probe = min(max(GREEDY_PROBES), self._n_vocab)
        self._sub_data = (lib.llama_token_data * probe)()
        self._sub_view = np.ctypeslib.as_array(self._sub_data)
        self._sub = lib.llama_token_data_array(self._sub_data, probe, -1, False)
        self._one = (lib.llama_token_data * 1)()
        self._single = lib.llama_token_data_array(self._one, 1, -1, False)
        self.steps = 0
        self.rejections = 0

    def _fill(self, ctx: Any, idx: int) -> None:
        logits = self._lib.llama_get_logits_ith(ctx, idx)
        self._view["id"] = self._ids
        self._view["logit"] = np.ctypeslib.as_array(logits, shape=(self._n_vocab,))
        self._view["p"] = 0.0
        self._cur.size, self._cur.selected, self._cur.sorted = self._n_vocab, -1, False

    def _selected(self) -> int:
        return int(self._cur.data[self._cur.selected].id)

    def allows(self, token: int) -> bool:
        """Whether the grammar, in its current state, accepts ``token`` next."""
        self._one[0].id, self._one[0].logit, self._one[0].p = token, 1.0, 0.0
        self._single.size, self._single.selected, self._single.sorted = 1, -1, False
        self._lib.llama_sampler_apply(self._grammar, ctypes.byref(self._single))
        return not math.isinf(self._one[0].logit)

    def _best_allowed(self) -> int | None:
        """Greedy under the grammar without checking the whole vocabulary: after the greedy
        chain ran, the candidates hold the penalised logits, so the first token the grammar
        allows among the best ``k`` by logit (then by id) is the one greedy would pick over the
        grammar-masked vocabulary. The grammar checks the best 64, then the best 2,048, in one
        call each; None when none of those is allowed (the caller checks them all)."""
        logits, ids = self._view["logit"], self._view["id"]
        for k in GREEDY_PROBES:
            if k >= self._n_vocab:
                break
            top = np.argpartition(-logits, k)[:k]
            order = top[np.lexsort((ids[top], -logits[top]))]
            sub = self._sub_view[:k]
            sub["id"], sub["logit"], sub["p"] = ids[order], logits[order], 0.0
            self._sub.size, self._sub.selected, self._sub.sorted = k, -1, False
            self._lib.llama_sampler_apply(self._grammar, ctypes.byref(self._sub))
            allowed = np.flatnonzero(np.isfinite(sub["logit"]))
            if allowed.size:
                return int(sub["id"][allowed[0]])
        return None

    def sample(self, ctx: Any, idx: int = -1) -> int:
        t = time.perf_counter()
        lib, chain = self._lib, self._chain.sampler
        self._fill(ctx.ctx, idx)
        lib.llama_sampler_apply(chain, ctypes.byref(self._cur))
        token = self._selected()
        self.steps += 1
        if not self.allows(token):
            self.rejections += 1
            found = self._best_allowed() if self.greedy else None
            if found is None:
                self._fill(ctx.ctx, idx)
                lib.llama_sampler_apply(self._grammar, ctypes.byref(self._cur))
                lib.llama_sampler_apply(chain, ctypes.byref(self._cur))
                found = self._selected()
            token = found
        lib.llama_sampler_accept(self._grammar, token)
        lib.llama_sampler_accept(chain, token)
        self._llama.timings["sampling_s"] += time.perf_counter() - t
        self._llama.timings["sampled"] += 1
        return token

    def accept(self, token: int) -> None:
        self._lib.llama_sampler_accept(self._grammar, token)
        self._chain.accept(token)

    def prime(self, history: list[int], grammar_tokens: list[int]) -> None:
        """Start where a reply already is: ``history`` feeds the chain's repeat penalty, the
        text of ``grammar_tokens`` advances the grammar (it must be text the grammar allows)."""
        for token in history:
            self._chain.accept(token)
        for token in grammar_tokens:
            self._lib.llama_sampler_accept(self._grammar, token)

    def reset(self) -> None:
        self._lib.llama_sampler_reset(self._grammar)
        self._chain.reset()

    def close(self) -> None:
        if self._grammar:
            self._lib.llama_sampler_free(self._grammar)
            self._grammar = None
        self._chain.close()

    def __del__(self) -> None:
        self.close()


# batches under this many tokens (a short cue after a cached prefix) run on the decoding
# thread count: waking more threads costs more than splitting so little work saves
SMALL_BATCH = 32


def _new_timings() -> dict[str, float]:
    return {"sampling_s": 0.0, "cache_state_s": 0.0, "sampled": 0}


@functools.cache
def llama_class() -> type:
    """``llama_cpp.Llama`` with the rejection grammar sampler, thread counts by batch size,
    lean state saves and per-call timings (see the module docstring)."""
    import llama_cpp

    class Llama(llama_cpp.Llama):  # type: ignore[misc,valid-type]
        """``timings``: since the last ``reset_timings()``, seconds in sampling and in
        state-cache saves and restores, and the tokens sampled (llama.cpp's own perf counters
        cover evaluation)."""

        timings: dict[str, float]

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.timings = _new_timings()
            self.other_load = OtherLoad()  # what other processes use, read per forward pass
            self._cores = usable_cores()
            self._fragments: dict[str, list[int] | None] = {}
            super().__init__(*args, **kwargs)

        def reset_timings(self) -> None:
            self.timings = _new_timings()

        # True: llama-cpp-python's own chain, the grammar over the whole vocabulary at every
        # step (``bench llm`` measures both in one run)
        grammar_first = False

        _prime: tuple[list[int], str] | None = None

        def piece(self, token: int) -> bytes:
            """The bytes ``token`` spells (no space stripped, special tokens as text)."""
            return bytes(self.detokenize([token], special=True))

        def fragment_tokens(self, text: str) -> list[int] | None:
            """Tokens that spell exactly ``text`` in the middle of a text, or None.

            A SentencePiece vocabulary (Llama, Mistral, Mixtral) puts a space before a text it
            tokenizes from the start; then the tokens after a newline, which starts a piece of
            its own, are taken instead.
            """
            cache = self._fragments
            if text not in cache:
                want = text.encode("utf-8")
                found: list[int] | None = None
                for lead in ("", "\n"):
                    tokens = list(self.tokenize((lead + text).encode("utf-8"), add_bos=False, special=False))
                    for k in range(min(len(tokens), 4) if lead else 1):
                        if b"".join(self.piece(t) for t in tokens[k:]) == want:
                            found = tokens[k:]
                            break
                    if found is not None:
                        break
                cache[text] = found
            return cache[text]

        def prime_sampler(self, history: list[int], grammar_text: str) -> None:
            """The next ``generate`` with a grammar continues a reply: its repeat penalty
            starts from ``history`` and its grammar past ``grammar_text``
            (:mod:`utils.llm_integration.fixed_text`)."""
            self._prime = (list(history), grammar_text)

        def _init_sampler(self, *args: Any, grammar: Any = None, **kwargs: Any) -> Any:
            prime, self._prime = self._prime, None
            if grammar is None or self.grammar_first:
                if prime is not None:
                    raise ValueError("a primed sampler needs a grammar and the rejection sampler")
                return _TimedSampler(self, super()._init_sampler(*args, grammar=grammar, **kwargs))
            chain = super()._init_sampler(*args, grammar=None, **kwargs)
            greedy = kwargs.get("temp", 0.8) == 0.0 and kwargs.get("mirostat_mode", 0) == 0
            sampler = RejectionGrammarSampler(self, chain, grammar, greedy=greedy)
            if prime is not None:
                history, text = prime
                prefix = self.fragment_tokens(text) if text else []
                if prefix is None:
                    raise ValueError(f"no tokens spell {text!r} on their own")
                sampler.prime(history, prefix)
            return sampler

        def eval(self, tokens: Any) -> None:
            tokens = list(tokens)
            if self.n_threads_batch == self.n_threads:  # one count for everything: nothing to choose
                return super().eval(tokens)
            if len(tokens) <= 1:
                self.other_load.note()
                return super().eval(tokens)
            if len(tokens) < SMALL_BATCH:
                threads = self.n_threads
            else:
                threads = batch_threads(
                    self.n_threads, self.n_threads_batch, self.other_load.cores(), self._cores
                )
            if threads == self.n_threads_batch:
                return super().eval(tokens)
            llama_cpp.llama_set_n_threads(self._ctx.ctx, self.n_threads, threads)
            try:
                super().eval(tokens)
            finally:
                llama_cpp.llama_set_n_threads(self._ctx.ctx, self.n_threads, self.n_threads_batch)

        def save_state(self) -> Any:
            t = time.perf_counter()
            scores = self.scores
            if not self._logits_all:  # the buffer is never read: nothing to keep
                self.scores = scores[:0]
            try:
                return super().save_state()
            finally:
                self.scores = scores
                self.timings["cache_state_s"] += time.perf_counter() - t

        def load_state(self, state: Any) -> None:
            t = time.perf_counter()
            scores = self.scores
            if not self._logits_all and state.scores.shape[0] == 0:
                self.scores = scores[:0]
            try:
                super().load_state(state)
            finally:
                self.scores = scores
                self.timings["cache_state_s"] += time.perf_counter() - t

    return Llama


class _TimedSampler:
    """The stock chain, timed like the grammar sampler so both report sampling time."""

    def __init__(self, llama: Any, chain: Any) -> None:
        self._llama = llama
        self._chain = chain

    def sample(self, ctx: Any, idx: int = -1) -> int:
        t = time.perf_counter()
        token = self._chain.sample(ctx, idx)
        self._llama.timings["sampling_s"] += time.perf_counter() - t
        self._llama.timings["sampled"] += 1
        return token

    def __getattr__(self, name: str) -> Any:
        return getattr(self._chain, name)
