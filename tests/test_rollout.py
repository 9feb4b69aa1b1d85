from __future__ import annotations

import pytest
import torch

from entrolab.rollout import Rollout, _top_p_filter, generate, teacher_forced

PROMPTS = ["3+4=?\n", "12-7+1=?\n", "use 1 2 3 to make 6\n"]


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.7, 0.9), (1.5, 0.5)])
def test_rollout_logprobs_and_entropy_match_a_teacher_forced_pass(tiny, temperature, top_p):
    model, tok = tiny
    gen = torch.Generator().manual_seed(0)
    r = generate(
        model,
        tok,
        PROMPTS,
        group_size=4,
        max_new_tokens=24,
        temperature=temperature,
        top_p=top_p,
        generator=gen,
        batch_size=5,
    )
    assert r.response_ids.shape[0] == 12 and r.prompt_ids.shape[0] == 12
    with torch.no_grad():
        logp, ent, _ = teacher_forced(model, r.prompt_ids, r.prompt_mask, r.response_ids, r.response_mask, temperature)
        # the definition, written out: -(p log p).sum(-1) of the tempered distribution of a fresh pass
        from entrolab.rollout import response_logits

        z = response_logits(model, r.prompt_ids, r.prompt_mask, r.response_ids, r.response_mask) / temperature
        p = torch.softmax(z.double(), -1)
        ent_def = -(p * p.log()).sum(-1)
    m = r.response_mask.bool()
    assert m.sum() > 100
    assert (logp - r.logp)[m].abs().max() < 1e-5
    assert (ent - r.entropy)[m].abs().max() < 1e-5
    assert (ent_def.float() - r.entropy)[m].abs().max() < 1e-5
    # padding positions hold exact zeros
    assert torch.all(r.logp[~m] == 0) and torch.all(r.entropy[~m] == 0)
    assert torch.all(r.response_ids[~m] == tok.pad_token_id)


def test_stops_at_eos_and_marks_truncation(tiny):
    model, tok = tiny
    gen = torch.Generator().manual_seed(1)
    r = generate(model, tok, PROMPTS, group_size=8, max_new_tokens=16, generator=gen)
    lengths = r.lengths
    eos_rows = (r.response_ids == tok.eos_token_id).any(-1)
    assert 0 < int(eos_rows.sum()) < len(r)  # this seed gives both kinds of rows
    # a row has EOS iff it is not truncated, and EOS is its last real token
    assert torch.equal(eos_rows, ~r.truncated)
    for i in torch.nonzero(eos_rows).flatten().tolist():
        assert r.response_ids[i, lengths[i] - 1] == tok.eos_token_id
    assert torch.all(lengths[r.truncated] == 16)
    assert r.response_mask.sum(-1).long().tolist() == lengths.tolist()


def test_sampling_is_seeded_and_group_layout_is_contiguous(tiny):
    model, tok = tiny
    a = generate(model, tok, PROMPTS, group_size=3, max_new_tokens=8, generator=torch.Generator().manual_seed(5))
    b = generate(model, tok, PROMPTS, group_size=3, max_new_tokens=8, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.response_ids, b.response_ids)
    first = tok(PROMPTS[0])["input_ids"]
    for i in range(3):
        row = a.prompt_ids[i][a.prompt_mask[i].bool()].tolist()
        assert row == first


def test_top_p_filter_keeps_the_smallest_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])

    def kept(p: float) -> list[bool]:
        return (_top_p_filter(probs, p) > 0)[0].tolist()

    assert kept(0.6) == [True, True, False, False]  # 0.5 < 0.6, so the second token is needed
    assert kept(0.5) == [True, False, False, False]  # 0.5 already reaches 0.5
    assert kept(0.81) == [True, True, True, False]
    assert kept(0.1) == [True, False, False, False]  # the top token always stays
    assert torch.equal(_top_p_filter(probs, 1.0), probs)


def test_top_p_never_samples_outside_the_nucleus(tiny):
    model, tok = tiny
    r = generate(
        model,
        tok,
        ["1"],
        group_size=64,
        max_new_tokens=1,
        top_p=0.3,
        generator=torch.Generator().manual_seed(0),
    )
    with torch.no_grad():
        z = model(torch.tensor([tok("1")["input_ids"]])).logits[0, -1]
    allowed = _top_p_filter(torch.softmax(z, -1)[None], 0.3)[0] > 0
    assert allowed[r.response_ids[:, 0]].all()


def test_cat_pads_prompts_left_and_responses_right(tiny):
    model, tok = tiny
    g = torch.Generator().manual_seed(0)
    a = generate(model, tok, ["1"], group_size=2, max_new_tokens=3, generator=g)
    b = generate(model, tok, ["12345"], group_size=2, max_new_tokens=6, generator=g)
    c = Rollout.cat([a, b], tok.pad_token_id)
    assert c.prompt_ids.shape[1] == b.prompt_ids.shape[1]
    assert c.response_ids.shape[1] == max(a.response_ids.shape[1], b.response_ids.shape[1])
    assert torch.equal(c.response_mask.sum(-1), torch.cat([a.response_mask.sum(-1), b.response_mask.sum(-1)]))


@pytest.mark.parametrize(
    ("kw", "msg"),
    [({"temperature": 0}, "temperature"), ({"top_p": 0}, "top_p"), ({"max_new_tokens": 0}, "max_new_tokens")],
)
def test_bad_sampling_arguments(tiny, kw, msg):
    model, tok = tiny
    with pytest.raises(ValueError, match=msg):
        generate(model, tok, ["1"], **kw)


def test_sample_categorical_draws_the_given_distribution_and_never_a_zero():
    from entrolab.rollout import sample_categorical

    probs = torch.tensor([[0.5, 0.0, 0.2, 0.3], [0.0, 0.0, 0.0, 2.0], [1.0, 1.0, 0.0, 0.0]])  # unnormalised ok
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_categorical(probs, gen) for _ in range(20000)])  # [20000, 3]
    freq = torch.stack([(draws == v).float().mean(0) for v in range(4)], -1)  # [3, 4]
    expected = probs / probs.sum(-1, keepdim=True)
    assert torch.all(freq[expected == 0] == 0)  # zero-probability tokens never come
    assert torch.allclose(freq, expected, atol=0.012)  # 3.4 standard errors at p = 0.5, n = 20000
    again = torch.stack([sample_categorical(probs, torch.Generator().manual_seed(0)) for _ in range(3)])
    assert torch.equal(again[0], again[1])  # a seeded generator gives the same draw
