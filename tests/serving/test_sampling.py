"""The engine's logit processing against hand-computed values: penalties, filters, their order."""

from __future__ import annotations

import math

import pytest
import torch

from serving.engine.sampling import (
    Sampler,
    apply_penalties,
    filter_min_p,
    filter_top_k,
    filter_top_p,
    prompt_mask_of,
    sample_tokens,
)
from serving.llm import SamplingParams

INF = float("inf")


def sampler(params: SamplingParams, prompt: tuple[int, ...] = (), vocab: int = 5) -> Sampler:
    mask = prompt_mask_of(prompt, vocab, "cpu") if prompt else None
    return Sampler.create(params, 0, "cpu", vocab_size=vocab, prompt_mask=mask)


def test_penalties_per_row_equal_a_hand_computed_reference() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5, -3.0, 1.0], [2.0, -1.0, 0.5, -3.0, 1.0]])
    prompt = torch.tensor([[False, True, False, False, False], [True, False, False, False, False]])
    counts = torch.tensor([[2.0, 0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 3.0, 0.0, 0.0]])
    got = apply_penalties(
        logits,
        prompt,
        counts,
        presence=torch.tensor([0.5, 0.0]),
        frequency=torch.tensor([0.25, 1.0]),
        repetition=torch.tensor([2.0, 1.0]),
    )
    expected = torch.tensor(
        [
            # 0: generated twice, positive: 2 / 2 - 0.25 * 2 - 0.5; 1: prompt only, negative:
            # -1 * 2; 2 and 4: untouched; 3: generated once, negative: -3 * 2 - 0.25 - 0.5
            [0.0, -2.0, 0.5, -6.75, 1.0],
            # repetition 1 is off even on the prompt token; 2: generated 3 times, 0.5 - 3 * 1
            [2.0, -1.0, -2.5, -3.0, 1.0],
        ]
    )
    torch.testing.assert_close(got, expected)


def test_filters_keep_per_row_sets() -> None:
    probabilities = torch.tensor([0.5, 0.3, 0.1, 0.06, 0.04])
    logits = probabilities.log().expand(2, -1)
    kept_by_k = filter_top_k(logits, torch.tensor([2, 0]))
    kept_by_p = filter_top_p(logits, torch.tensor([0.7, 1.0]))  # 0.5 + 0.3 reach 0.7
    kept_by_min_p = filter_min_p(logits, torch.tensor([0.25, 0.0]))  # floor 0.125 in row 0
    for kept in (kept_by_k, kept_by_p, kept_by_min_p):
        assert torch.isfinite(kept[0]).tolist() == [True, True, False, False, False]
        torch.testing.assert_close(kept[1], logits[1])  # off in row 1
        torch.testing.assert_close(kept[0, :2], logits[0, :2])


def test_min_p_is_relative_to_the_likeliest_token() -> None:
    logits = torch.tensor([[0.0, math.log(0.49), math.log(0.51), -INF]])
    kept = filter_min_p(logits, torch.tensor([0.5]))
    assert torch.isfinite(kept[0]).tolist() == [True, False, True, False]


def test_greedy_is_penalised_before_its_argmax() -> None:
    logits = torch.tensor([[3.0, 2.5, 0.0, -1.0, 0.0]])
    plain = sampler(SamplingParams(temperature=0.0))
    assert plain.counts is None  # nothing to count without penalties
    assert sample_tokens([plain], logits) == [0]
    frequent = sampler(SamplingParams(temperature=0.0, frequency_penalty=0.25))
    frequent.record(0)
    assert sample_tokens([frequent], logits) == [0]  # 3 - 0.25 > 2.5
    frequent.record(0)
    frequent.record(0)
    assert sample_tokens([frequent], logits) == [1]  # 3 - 3 * 0.25 < 2.5
    repeated = sampler(SamplingParams(temperature=0.0, repetition_penalty=1.5), prompt=(0,))
    assert sample_tokens([repeated], logits) == [1]  # a prompt token: 3 / 1.5 = 2 < 2.5
    assert logits.tolist() == [[3.0, 2.5, 0.0, -1.0, 0.0]]  # the caller's logits stay raw


def test_penalties_then_temperature_then_min_p() -> None:
    """vLLM's order. Penalised first, token 0 ties with token 1 and both survive min_p = 0.9;
    temperature first would leave them e^-1 apart and drop token 1. Scaled by temperature 2
    before min_p, token 2 is e^-0.5 = 0.61 of the best and survives min_p = 0.5."""
    params = SamplingParams(temperature=0.5, presence_penalty=1.0, min_p=0.9, seed=1)
    penalised = sampler(params, vocab=3)
    penalised.record(0)
    logits = torch.tensor([[1.0, 0.0, -INF]])
    draws = {sample_tokens([penalised], logits)[0] for _ in range(40)}
    assert draws == {0, 1}
    hot = sampler(SamplingParams(temperature=2.0, min_p=0.5, seed=1), vocab=3)
    draws = {sample_tokens([hot], torch.tensor([[0.0, -INF, -1.0]]))[0] for _ in range(40)}
    assert draws == {0, 2}


def test_a_seeded_row_draws_the_same_whatever_it_is_batched_with() -> None:
    logits = torch.randn(3, 50)
    params = SamplingParams(temperature=1.0, top_k=20, min_p=0.05, seed=7)
    alone = sample_tokens([sampler(params, vocab=50)], logits[1:2])
    others = [
        sampler(SamplingParams(temperature=0.0, repetition_penalty=1.2), prompt=(3,), vocab=50),
        sampler(params, vocab=50),
        sampler(SamplingParams(temperature=0.8, top_p=0.5, frequency_penalty=1.0), vocab=50),
    ]
    others[2].record(4)
    batched = sample_tokens(others, logits)
    assert batched[1] == alone[0]
    greedy = logits[0].clone()
    greedy[3] = greedy[3] / 1.2 if greedy[3] > 0 else greedy[3] * 1.2
    assert batched[0] == int(torch.argmax(greedy))
    assert others[2].counts is not None and others[2].counts[4] == 1.0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("presence_penalty", 2.5),
        ("presence_penalty", -2.01),
        ("frequency_penalty", -3.0),
        ("frequency_penalty", float("nan")),
        ("repetition_penalty", 0.0),
        ("repetition_penalty", -1.0),
        ("repetition_penalty", 11.0),
        ("min_p", -0.1),
        ("min_p", 1.5),
    ],
)
def test_out_of_range_values_name_the_field(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"{field}={value}"):
        SamplingParams(**{field: value})  # type: ignore[arg-type]


def test_the_range_edges_are_valid() -> None:
    SamplingParams(presence_penalty=-2.0, frequency_penalty=2.0, repetition_penalty=10.0, min_p=1.0)
    SamplingParams(repetition_penalty=0.01, min_p=0.0)
