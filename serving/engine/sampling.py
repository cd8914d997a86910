"""Turning logits into tokens: temperature, top-k, top-p, seeded sampling, logprobs."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from serving.llm import SamplingParams


@dataclass(slots=True)
class Sampler:
    """Per-sequence sampling state: its parameters and its own random generator (for seeds)."""

    params: SamplingParams
    generator: torch.Generator

    @classmethod
    def create(cls, params: SamplingParams, index: int, device: torch.device | str) -> Sampler:
        generator = torch.Generator(device=device)
        if params.seed is not None:
            generator.manual_seed(params.seed * 1_000_003 + index)  # choices differ, repeatably
        else:
            generator.seed()
        return cls(params, generator)

    def sample(self, logits: torch.Tensor) -> int:
        """One token from (V,) logits (already masked by any grammar)."""
        params = self.params
        if params.temperature == 0.0:
            return int(torch.argmax(logits))
        scaled = logits.float() / params.temperature
        if params.top_k:
            kth = torch.topk(scaled, min(params.top_k, scaled.shape[-1])).values[-1]
            scaled = scaled.masked_fill(scaled < kth, float("-inf"))
        probabilities = torch.softmax(scaled, dim=-1)
        if params.top_p < 1.0:
            sorted_probs, order = torch.sort(probabilities, descending=True)
            cumulative = torch.cumsum(sorted_probs, dim=-1)
            drop = cumulative - sorted_probs > params.top_p  # keep the smallest set reaching p
            sorted_probs = sorted_probs.masked_fill(drop, 0.0)
            probabilities = torch.zeros_like(probabilities).scatter_(0, order, sorted_probs)
        return int(torch.multinomial(probabilities, 1, generator=self.generator))


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
