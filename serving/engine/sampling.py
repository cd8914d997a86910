"""Turning logits into tokens: penalties, temperature, top-k, top-p, min-p, seeded sampling,
logprobs.

A step samples a batch of sequences at once, each with its own :class:`SamplingParams`, in vLLM's
order: repetition, frequency and presence penalties on the logits, then temperature (or argmax
for greedy rows), then top-k, top-p and min-p. Every stage runs on the whole (B, V) batch with
per-row parameters, and is skipped when no row uses it; only the draw is per row, so that each
sequence's own generator keeps seeded sampling repeatable whatever it is batched with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from serving.llm import SamplingParams


@dataclass(slots=True)
class Sampler:
    """Per-sequence sampling state: its parameters, its own random generator (for seeds), and
    what the penalties need."""

    params: SamplingParams
    generator: torch.Generator
    prompt_mask: torch.Tensor | None = None
    """(V,) bool: the prompt's tokens; only with a repetition penalty (shared by a request's
    choices)."""
    counts: torch.Tensor | None = None
    """(V,) float32: how often each token was generated so far; only with penalties."""

    @classmethod
    def create(
        cls,
        params: SamplingParams,
        index: int,
        device: torch.device | str,
        *,
        vocab_size: int,
        prompt_mask: torch.Tensor | None = None,
    ) -> Sampler:
        """The sampler of choice ``index`` over logits of width ``vocab_size``; ``prompt_mask``
        from :func:`prompt_mask_of` when ``params`` has a repetition penalty."""
        generator = torch.Generator(device=device)
        if params.seed is not None:
            generator.manual_seed(params.seed * 1_000_003 + index)  # choices differ, repeatably
        else:
            generator.seed()
        counts = None
        if penalised(params):
            counts = torch.zeros(vocab_size, dtype=torch.float32, device=device)
        return cls(params, generator, prompt_mask, counts)

    def record(self, token: int) -> None:
        """Count a generated token for the penalties."""
        if self.counts is not None:
            self.counts[token] += 1


def penalised(params: SamplingParams) -> bool:
    """Whether ``params`` penalises repetition at all."""
    return bool(params.presence_penalty or params.frequency_penalty) or (
        params.repetition_penalty != 1.0
    )


def prompt_mask_of(
    prompt_ids: Sequence[int], vocab_size: int, device: torch.device | str
) -> torch.Tensor:
    """(V,) bool, True at every token id the prompt holds."""
    mask = torch.zeros(vocab_size, dtype=torch.bool, device=device)
    mask[torch.tensor(prompt_ids, dtype=torch.long, device=device)] = True
    return mask


def apply_penalties(
    logits: torch.Tensor,
    prompt_mask: torch.Tensor,
    counts: torch.Tensor,
    presence: torch.Tensor,
    frequency: torch.Tensor,
    repetition: torch.Tensor,
) -> torch.Tensor:
    """Penalised (B, V) float logits, as vLLM computes them (a new tensor).

    ``prompt_mask`` (B, V) bool marks prompt tokens, ``counts`` (B, V) the generated ones;
    ``presence``, ``frequency``, ``repetition`` are (B,). Over tokens in the prompt or the output,
    positive logits are divided by the repetition penalty and negative ones multiplied by it
    (CTRL, Keskar et al. 2019); then, over output tokens, frequency * count and presence are
    subtracted (OpenAI's penalties).
    """
    generated = counts > 0
    scale = torch.where(prompt_mask | generated, repetition[:, None], 1.0)  # (B, V)
    logits = torch.where(logits > 0, logits / scale, logits * scale)
    return logits - frequency[:, None] * counts - presence[:, None] * generated


def filter_top_k(logits: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """(B, V) logits with all but each row's ``k`` (B,) largest set to -inf (ties at the k-th
    stay); k = 0 keeps the row."""
    vocab = logits.shape[-1]
    k = k.clamp(max=vocab)
    best = torch.topk(logits, int(k.max()), dim=-1).values  # (B, max k)
    kth = best.gather(-1, (k - 1).clamp(min=0)[:, None])  # (B, 1)
    kth = torch.where(k[:, None] > 0, kth, float("-inf"))
    return logits.masked_fill(logits < kth, float("-inf"))


def filter_top_p(logits: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """(B, V) logits outside each row's nucleus set to -inf: the smallest set of likeliest
    tokens whose probability reaches ``p`` (B,); p >= 1 keeps the row."""
    ordered, order = torch.sort(logits, dim=-1, descending=True)
    probabilities = torch.softmax(ordered, dim=-1)
    before = torch.cumsum(probabilities, dim=-1) - probabilities  # mass of the likelier ones
    limit = torch.where(p < 1.0, p, float("inf"))[:, None]
    drop = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, order, before > limit)
    return logits.masked_fill(drop, float("-inf"))


def filter_min_p(logits: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """(B, V) logits with tokens less likely than ``min_p`` (B,) times the row's likeliest one
    set to -inf (Nguyen et al. 2024, as vLLM applies it)."""
    probabilities = torch.softmax(logits, dim=-1)
    floor = min_p[:, None] * probabilities.max(dim=-1, keepdim=True).values
    return logits.masked_fill(probabilities < floor, float("-inf"))


def sample_tokens(samplers: Sequence[Sampler], logits: torch.Tensor) -> list[int]:
    """One token per sampler from its row of (B, V) logits (already masked by any grammar or
    min_tokens); ``logits`` is left unchanged."""
    params = [s.params for s in samplers]
    device = logits.device
    scores = logits.float()
    if any(s.counts is not None for s in samplers):
        scores = _penalised(samplers, scores)
    greedy = [p.temperature == 0.0 for p in params]
    if all(greedy):
        return [int(t) for t in torch.argmax(scores, dim=-1).tolist()]
    temperature = _column([p.temperature or 1.0 for p in params], device)
    scaled = scores / temperature[:, None]
    if any(p.top_k for p in params):
        k = torch.tensor([p.top_k for p in params], dtype=torch.long, device=device)
        scaled = filter_top_k(scaled, k)
    if any(p.top_p < 1.0 for p in params):
        scaled = filter_top_p(scaled, _column([p.top_p for p in params], device))
    if any(p.min_p for p in params):
        scaled = filter_min_p(scaled, _column([p.min_p for p in params], device))
    probabilities = torch.softmax(scaled, dim=-1)
    best = torch.argmax(scores, dim=-1, keepdim=True)  # (B, 1)
    draws = [
        best[i]
        if greedy[i]
        else torch.multinomial(probabilities[i], 1, generator=sampler.generator)
        for i, sampler in enumerate(samplers)
    ]
    return [int(t) for t in torch.cat(draws).tolist()]  # one device sync for the batch


def _penalised(samplers: Sequence[Sampler], scores: torch.Tensor) -> torch.Tensor:
    """(B, V) float ``scores`` with the penalties of the samplers that have any applied."""
    rows: list[int] = []
    counts: list[torch.Tensor] = []
    masks: list[torch.Tensor] = []
    no_prompt = torch.zeros(scores.shape[-1], dtype=torch.bool, device=scores.device)
    for i, sampler in enumerate(samplers):
        if sampler.counts is not None:
            rows.append(i)
            counts.append(sampler.counts)
            masks.append(sampler.prompt_mask if sampler.prompt_mask is not None else no_prompt)
    params = [samplers[i].params for i in rows]
    index = torch.tensor(rows, dtype=torch.long, device=scores.device)
    penalised_rows = apply_penalties(
        scores[index],
        torch.stack(masks),
        torch.stack(counts),
        _column([p.presence_penalty for p in params], scores.device),
        _column([p.frequency_penalty for p in params], scores.device),
        _column([p.repetition_penalty for p in params], scores.device),
    )
    return scores.index_copy(0, index, penalised_rows)


def _column(values: list[float], device: torch.device) -> torch.Tensor:
    """(B,) float32 per-row parameters on ``device``."""
    return torch.tensor(values, dtype=torch.float32, device=device)


def logprobs_of(
    logits: torch.Tensor, chosen: torch.Tensor, top: int
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Log-probabilities (natural log, from the raw logits) of ``chosen`` tokens.

    logits (N, V), chosen (N,) → (N,) logprobs, and when ``top`` > 0 the (N, top) best
    alternatives' logprobs and token ids.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    picked = logp.gather(-1, chosen[:, None])[:, 0]
    if top <= 0:
        return picked, None, None
    best = torch.topk(logp, min(top, logp.shape[-1]), dim=-1)
    return picked, best.values, best.indices
