"""TorchEngine: continuous batching over a transformers model with Mneme's own KV cache.

One background thread runs the step loop. Each step prefills one chunk of one waiting prompt
and then decodes one token for every running sequence in a single batched forward pass, so
concurrent requests share the model instead of queueing behind each other. Requests join and
leave between steps. Results flow back to each caller's asyncio loop as they are produced.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from serving.engine.attention import CURRENT, ForwardBatch, ModeContext, rotary_of
from serving.engine.cache import SlotKVCache, SlotObserver
from serving.engine.config import EngineConfig
from serving.engine.detokenizer import Detokenizer
from serving.engine.grammar import GrammarCompiler, GrammarMatcher
from serving.engine.loading import LoadedModel, load_model
from serving.engine.modes import make_mode
from serving.engine.prefixes import PrefixCache, worth_waiting
from serving.engine.sampling import Sampler, logprobs_of, prompt_mask_of, sample_tokens
from serving.errors import EngineFailed, RequestRejected
from serving.llm import FinishReason, SamplingParams, TokenLogprob

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EngineRequest:
    prompt_ids: tuple[int, ...]
    params: SamplingParams
    prompt_logprobs: int | None = None
    """None = skip; k >= 0 = logprob of every prompt token (first: None) plus k alternatives."""
    json_schema: dict[str, Any] | None = None
    """Constrain every choice to JSON valid under this schema (grammar-guided decoding)."""


@dataclass(frozen=True, slots=True)
class PromptResult:
    """Sent first for every request."""

    prompt_tokens: int
    prompt_logprobs: tuple[TokenLogprob, ...] | None


@dataclass(frozen=True, slots=True)
class EngineOutput:
    """One step of one choice: the newly final text, the new token, and how it ended if it did."""

    index: int
    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprob, ...]
    finish_reason: FinishReason | None


_DONE = object()


@dataclass(eq=False)
class _Request:
    spec: EngineRequest
    emit: Callable[[object], None]
    pending: list[int]  # prompt tokens not yet prefilled
    prompt_logprobs: list[TokenLogprob] = field(default_factory=list)
    slot: int | None = None  # cache slot holding the prompt while it is prefilled
    sequences: list[_Sequence] = field(default_factory=list)
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass(eq=False)
class _Sequence:
    request: _Request
    index: int
    slot: int
    sampler: Sampler
    detokenizer: Detokenizer
    matcher: GrammarMatcher | None
    generated: int = 0
    next_token: int | None = None  # fed at the next decode step
    finished: bool = False


class TorchEngine:
    """The built-in engine. Thread-safe; ``generate`` may be called from any asyncio loop."""

    def __init__(self, config: EngineConfig | None = None, *, loaded: LoadedModel | None = None):
        self.config = config or EngineConfig()
        self.loaded = loaded or load_model(self.config)
        self.tokenizer = self.loaded.tokenizer
        self.max_context = self.loaded.max_context
        inv_freq, rope_type = rotary_of(self.loaded.model)
        self._mode = make_mode(
            self.config.attention.mode, ModeContext(self.config, inv_freq, rope_type)
        )
        parameter = next(self.loaded.model.parameters())
        self._device = parameter.device
        self.cache = SlotKVCache(
            self.loaded.num_layers,
            self.loaded.kv_heads,
            self.loaded.head_dim,
            dtype=parameter.dtype,
            device=self._device,
        )
        if isinstance(self._mode, SlotObserver):  # per-slot indexes follow the slots
            self.cache.observers.append(self._mode)
        if self.config.prefix_cache_tokens < 0:
            raise ValueError(
                f"prefix_cache_tokens={self.config.prefix_cache_tokens} must be >= 0 (0 = off)"
            )
        # A reused prefix is plain KV; the long-context modes also keep per-slot indexes of it.
        self.prefixes = (
            PrefixCache(self.config.prefix_cache_tokens)
            if self.config.prefix_cache_tokens and self.config.attention.mode == "full"
            else None
        )
        if self.config.prefix_idle_s is not None and self.config.prefix_idle_s <= 0:
            raise ValueError(
                f"prefix_idle_s={self.config.prefix_idle_s} must be > 0 (None = keep prefixes)"
            )
        self._clear_prefixes = threading.Event()
        self._last_busy = time.monotonic()  # when a request was last waiting or running
        self._stop_ids = torch.tensor(
            self.loaded.stop_token_ids, dtype=torch.long, device=self._device
        )
        self._grammar: GrammarCompiler | None = None
        self._inbox: queue.Queue[_Request | None] = queue.Queue()
        self._waiting: list[_Request] = []  # prompts being prefilled, oldest first
        self._running: list[_Sequence] = []
        self._owner: dict[int, _Sequence | _Request] = {}  # cache slot → its holder
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="mneme-engine", daemon=True)
        self._thread.start()

    @property
    def model_name(self) -> str:
        return self.loaded.name

    # ----------------------------------------------------------------- public API

    async def generate(self, spec: EngineRequest) -> AsyncIterator[PromptResult | EngineOutput]:
        """Run one request: a :class:`PromptResult`, then :class:`EngineOutput` per step and
        choice until every choice has a finish reason. Leaving the loop early (a client that
        disconnects) cancels the request and frees its cache."""
        self.check(spec)
        loop = asyncio.get_running_loop()
        outputs: asyncio.Queue[object] = asyncio.Queue()

        def emit(item: object) -> None:
            try:
                loop.call_soon_threadsafe(outputs.put_nowait, item)
            except RuntimeError:  # the caller's event loop is closed: nobody is listening
                request.cancelled.set()

        request = _Request(spec, emit, list(spec.prompt_ids))
        self._inbox.put(request)
        try:
            while True:
                item = await outputs.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, PromptResult | EngineOutput)
                yield item
        finally:
            request.cancelled.set()
            self._inbox.put(None)  # wake the loop so it frees the request's slots now

    def clear_prefixes(self) -> None:
        """Forget every kept prompt prefix before the next request is prefilled."""
        self._clear_prefixes.set()

    def shutdown(self) -> None:
        self._stopped.set()
        self._inbox.put(None)
        self._thread.join(timeout=30)

    def grammar(self) -> GrammarCompiler:
        if self._grammar is None:
            self._grammar = GrammarCompiler(
                self.tokenizer, self.loaded.vocab_size, list(self.loaded.stop_token_ids)
            )
        return self._grammar

    def check(self, spec: EngineRequest) -> None:
        """Raise :class:`RequestRejected` if the engine cannot serve ``spec`` as asked."""
        if not spec.prompt_ids:
            raise RequestRejected("the prompt is empty; give at least one token of text")
        total = len(spec.prompt_ids) + spec.params.max_tokens
        if len(spec.prompt_ids) >= self.max_context or total > self.max_context:
            raise RequestRejected(
                f"the prompt has {len(spec.prompt_ids)} tokens and asks for "
                f"{spec.params.max_tokens} more, but the model's context is {self.max_context} "
                "tokens; shorten the prompt or lower max_tokens"
            )
        if spec.json_schema is not None:
            self.grammar()  # fail in the caller's thread if xgrammar cannot handle the tokenizer

    # ----------------------------------------------------------------- the loop

    def _loop(self) -> None:
        with torch.inference_mode():
            while not self._stopped.is_set():
                idle = not self._waiting and not self._running
                self._admit(block=idle)
                if self._waiting or self._running:
                    self._last_busy = time.monotonic()
                elif self._idle_too_long():
                    self._clear_prefixes.set()
                if self._clear_prefixes.is_set() and self.prefixes is not None:
                    self._clear_prefixes.clear()
                    self.prefixes.clear()  # here: only this thread touches the prefix cache
                self._drop_cancelled()
                try:
                    if self._waiting:
                        self._prefill_step()
                    if self._running:
                        self._decode_step()
                except Exception as err:  # the thread's edge: fail its requests, keep serving
                    log.exception("engine step failed")
                    self._fail_all(EngineFailed(f"the engine failed: {err}"))

    def _admit(self, *, block: bool) -> None:
        try:
            item = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
            while True:
                if item is not None:
                    self._waiting.append(item)
                item = self._inbox.get_nowait()
        except queue.Empty:
            return

    def _idle_too_long(self) -> bool:
        """Prefixes are kept and no request came for ``prefix_idle_s``."""
        limit = self.config.prefix_idle_s
        return (
            limit is not None
            and self.prefixes is not None
            and len(self.prefixes) > 0
            and time.monotonic() - self._last_busy > limit
        )

    def _drop_cancelled(self) -> None:
        for request in [r for r in self._waiting if r.cancelled.is_set()]:
            self._waiting.remove(request)
            if request.slot is not None:
                self._release(request.slot)
        for sequence in [s for s in self._running if s.request.cancelled.is_set()]:
            self._finish(sequence, "cancelled", notify=False)

    def _release(self, slot: int) -> None:
        del self._owner[slot]
        moved = self.cache.release(slot)
        if moved is not None:
            holder = self._owner.pop(moved)
            holder.slot = slot
            self._owner[slot] = holder

    def _forward(
        self,
        tokens: torch.Tensor,
        slots: list[int],
        keep: int | torch.Tensor,
        lengths: list[int] | None = None,
    ) -> torch.Tensor:
        """Run the model on (B, T) new tokens of the given slots.

        ``keep`` is transformers' ``logits_to_keep``: 0 = every position, k = the last k, a 1-D
        tensor = those positions. ``lengths`` are the real new tokens per row when rows were
        right-padded to T; the padding's keys land past each row's length, where the causal
        mask never looks and the next write overwrites them. Returns (B, kept, V) logits.
        """
        slot_index = torch.tensor(slots, dtype=torch.long, device=self._device)
        past = self.cache.lengths[slot_index].clone()
        new = tokens.shape[1]
        self.cache.reserve(int(past.max()) + new)
        positions = past[:, None] + torch.arange(new, device=self._device)[None, :]
        token = CURRENT.set(ForwardBatch(self.cache, slot_index, past, new, self._mode))
        try:
            output = self.loaded.model(
                input_ids=tokens, position_ids=positions, use_cache=False, logits_to_keep=keep
            )
        finally:
            CURRENT.reset(token)
        added = torch.tensor(lengths, device=self._device) if lengths is not None else new
        self.cache.lengths[slot_index] += added
        logits: torch.Tensor = output.logits
        return logits

    def _prefill_step(self) -> None:
        """Prefill one chunk of every waiting prompt (up to max_batch) in one forward pass.

        A request that wants prompt logprobs needs every position's logits, so it goes alone.
        """
        first = self._waiting[0]
        if first.spec.prompt_logprobs is not None:
            batch = [first]
        else:
            batch = [r for r in self._waiting if r.spec.prompt_logprobs is None]
            batch = self._hold_back_shared(batch)[: self.config.max_batch]
        starts, chunks = [], []
        for request in batch:
            if request.slot is None:
                request.slot = self.cache.allocate()
                self._owner[request.slot] = request
                self._reuse_prefix(request)
            starts.append(len(request.spec.prompt_ids) - len(request.pending))
            chunks.append(request.pending[: self.config.prefill_chunk])
            request.pending = request.pending[self.config.prefill_chunk :]
        slots = [r.slot for r in batch if r.slot is not None]
        want = first.spec.prompt_logprobs if len(batch) == 1 else None
        if len(batch) == 1:
            tokens = torch.tensor(chunks, dtype=torch.long, device=self._device)
            logits = self._forward(tokens, slots, 0 if want is not None else 1)  # (1, T|1, V)
            last = [logits[0, -1]]
            if want is not None:
                self._record_prompt_logprobs(first, starts[0], logits[0], want)
        else:
            width = max(len(c) for c in chunks)
            padded = [c + [0] * (width - len(c)) for c in chunks]  # right padding, never read
            ends = [len(c) - 1 for c in chunks]
            kept = sorted(set(ends))
            tokens = torch.tensor(padded, dtype=torch.long, device=self._device)
            keep = torch.tensor(kept, dtype=torch.long, device=self._device)
            logits = self._forward(tokens, slots, keep, [len(c) for c in chunks])  # (B, K, V)
            last = [logits[row, kept.index(end)] for row, end in enumerate(ends)]
        for request, final in zip(batch, last, strict=True):
            if request.pending:
                continue
            self._waiting.remove(request)
            if self.prefixes is not None and request.slot is not None:
                prompt = request.spec.prompt_ids
                self.prefixes.store(prompt, *self.cache.prefix(request.slot, len(prompt)))
            scored = request.spec.prompt_logprobs is not None
            request.emit(
                PromptResult(
                    len(request.spec.prompt_ids),
                    tuple(request.prompt_logprobs) if scored else None,
                )
            )
            self._start_sequences(request, final)

    def _hold_back_shared(self, waiting: list[_Request]) -> list[_Request]:
        """``waiting`` without the not-yet-started prompts that share a prefix with one before
        them: they wait until it is prefilled and kept, then prefill only what differs."""
        if self.prefixes is None:
            return waiting
        going: list[_Request] = []
        for request in waiting:
            prompt = request.spec.prompt_ids
            if request.slot is None and any(
                worth_waiting(prompt, other.spec.prompt_ids, self.prefixes.budget)
                for other in going
            ):
                continue
            going.append(request)
        return going

    def _reuse_prefix(self, request: _Request) -> None:
        """Fill the request's fresh slot with the longest cached prefix of its prompt."""
        if self.prefixes is None or request.spec.prompt_logprobs is not None:
            return  # prompt logprobs need every prompt position's logits
        hit = self.prefixes.lookup(request.spec.prompt_ids)
        if hit is not None:
            assert request.slot is not None
            self.cache.load(request.slot, hit.keys, hit.values)
            request.pending = request.pending[hit.length :]

    def _record_prompt_logprobs(
        self, request: _Request, start: int, logits: torch.Tensor, top: int
    ) -> None:
        """Logprobs of the prompt tokens this chunk predicts: logits row i (position start + i)
        predicts token start + i + 1, so chunks need no overlap."""
        prompt = request.spec.prompt_ids
        if start == 0:
            request.prompt_logprobs.append(
                TokenLogprob(self._piece(prompt[0]), None, token_id=prompt[0])
            )
        targets = prompt[start + 1 : start + logits.shape[0] + 1]
        if not targets:
            return
        chosen = torch.tensor(targets, dtype=torch.long, device=logits.device)
        picked, best, best_ids = logprobs_of(logits[: len(targets)], chosen, top)
        for i, token in enumerate(targets):
            request.prompt_logprobs.append(
                self._logprob(token, float(picked[i]), best, best_ids, i)
            )

    def _start_sequences(self, request: _Request, last_logits: torch.Tensor) -> None:
        """The prompt is cached: create the n choices, forking its slot, and sample each one's
        first token from the prompt's last (V,) logits."""
        spec = request.spec
        params = spec.params
        assert request.slot is not None
        prompt_slot = request.slot
        vocab = last_logits.shape[-1]
        prompt_mask = None
        if params.repetition_penalty != 1.0:
            prompt_mask = prompt_mask_of(spec.prompt_ids, vocab, self._device)  # shared by all n
        for index in range(params.n):
            slot = prompt_slot if index == 0 else self.cache.fork(prompt_slot)
            matcher = self.grammar().matcher(spec.json_schema) if spec.json_schema else None
            sampler = Sampler.create(
                params, index, self._device, vocab_size=vocab, prompt_mask=prompt_mask
            )
            sequence = _Sequence(
                request,
                index,
                slot,
                sampler,
                Detokenizer(self.tokenizer, params.stop),
                matcher,
            )
            self._owner[slot] = sequence
            request.sequences.append(sequence)
        request.slot = None
        self._advance(request.sequences, last_logits.expand(params.n, -1))
        self._running.extend(s for s in request.sequences if not s.finished)

    def _decode_step(self) -> None:
        batch = self._running[: self.config.max_batch]
        self._running = self._running[self.config.max_batch :] + batch  # round-robin if over
        tokens = torch.tensor(
            [[s.next_token] for s in batch], dtype=torch.long, device=self._device
        )
        logits = self._forward(tokens, [s.slot for s in batch], 1)[:, -1]
        self._advance(batch, logits)
        self._running = [s for s in self._running if not s.finished]

    def _advance(self, sequences: list[_Sequence], logits: torch.Tensor) -> None:
        """Sample every sequence's next token from its row of (B, V) logits, all rows at once,
        and emit what each produced."""
        chosen = sample_tokens([s.sampler for s in sequences], self._masked(sequences, logits))
        for sequence, row, token in zip(sequences, logits, chosen, strict=True):
            self._emit(sequence, row, token)

    def _masked(self, sequences: list[_Sequence], logits: torch.Tensor) -> torch.Tensor:
        """(B, V) ``logits`` with what each sequence may not emit now at -inf: tokens its
        grammar forbids, and the end-of-sequence tokens before its min_tokens. A copy when
        anything is masked; ``logits`` itself stays raw (logprobs come from it)."""
        masked: torch.Tensor | None = None
        for row, sequence in enumerate(sequences):
            early = sequence.generated < sequence.request.spec.params.min_tokens
            if sequence.matcher is None and not (early and self._stop_ids.numel()):
                continue
            if masked is None:
                masked = logits.float().clone()
            if sequence.matcher is not None:
                masked[row] = sequence.matcher.mask(masked[row])
            if early and self._stop_ids.numel():
                masked[row].index_fill_(0, self._stop_ids, float("-inf"))  # too early to end
        return logits if masked is None else masked

    def _emit(self, sequence: _Sequence, logits: torch.Tensor, token: int) -> None:
        """Take ``token`` as the sequence's next one (sampled from its raw (V,) ``logits``) and
        emit what it produced."""
        params = sequence.request.spec.params
        logprobs: tuple[TokenLogprob, ...] = ()
        if params.logprobs is not None:
            chosen = torch.tensor([token], device=logits.device)
            picked, best, best_ids = logprobs_of(logits[None], chosen, params.logprobs)
            logprobs = (self._logprob(token, float(picked[0]), best, best_ids, 0),)
        sequence.generated += 1
        sequence.sampler.record(token)
        if sequence.matcher is not None:
            sequence.matcher.accept(token)
        reason: FinishReason | None = None
        text = ""
        if (token in self.loaded.stop_token_ids and not params.ignore_eos) or (
            sequence.matcher is not None and sequence.matcher.finished
        ):
            reason = "stop"
        else:
            text = sequence.detokenizer.add(token)
            if sequence.detokenizer.stopped:
                reason = "stop"
            elif sequence.generated >= params.max_tokens:
                reason = "length"
        if reason is not None:
            text += sequence.detokenizer.flush() if reason == "length" else ""
            sequence.request.emit(EngineOutput(sequence.index, text, (token,), logprobs, reason))
            self._finish(sequence, reason, notify=False)
            return
        sequence.next_token = token
        sequence.request.emit(EngineOutput(sequence.index, text, (token,), logprobs, None))

    def _finish(self, sequence: _Sequence, reason: FinishReason, *, notify: bool) -> None:
        if sequence.finished:
            return
        sequence.finished = True
        if notify:
            sequence.request.emit(EngineOutput(sequence.index, "", (), (), reason))
        self._release(sequence.slot)
        if sequence in self._running:
            self._running.remove(sequence)
        if all(s.finished for s in sequence.request.sequences):
            sequence.request.emit(_DONE)

    def _fail_all(self, error: BaseException) -> None:
        requests = {id(r): r for r in self._waiting} | {
            id(s.request): s.request for s in self._running
        }
        for request in requests.values():
            request.emit(error)
        self._waiting.clear()
        self._running.clear()
        self._owner.clear()
        self.cache.live = 0
        self.cache.lengths.zero_()

    # ----------------------------------------------------------------- helpers

    def _piece(self, token: int) -> str:
        return str(self.tokenizer.decode([token]))

    def _logprob(
        self,
        token: int,
        logprob: float,
        best: torch.Tensor | None,
        best_ids: torch.Tensor | None,
        row: int,
    ) -> TokenLogprob:
        """A TokenLogprob for ``token`` with row ``row`` of the top-k alternatives."""
        if best is None or best_ids is None:
            return TokenLogprob(self._piece(token), logprob, token_id=token)
        ids = tuple(int(t) for t in best_ids[row])
        top = tuple((self._piece(t), float(v)) for t, v in zip(ids, best[row], strict=True))
        return TokenLogprob(self._piece(token), logprob, top, token, ids)
