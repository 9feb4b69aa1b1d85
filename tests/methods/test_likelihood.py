"""Likelihood rewards: the note's identities (exp, AM-GM, additivity, -T ln 2), padding, combine modes, errors."""

from __future__ import annotations

import math

import pytest
import torch

from entrolab import registry
from entrolab.methods.likelihood import VARIANTS, LikelihoodConfig, likelihood

from ._helpers import NAN, gen, pad


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    """Same shape and dtype, equal to 1e-6 (torch.testing.assert_close costs seconds on its first call)."""
    assert a.shape == b.shape and a.dtype == b.dtype, (a, b)
    assert torch.allclose(a, b, rtol=1e-6, atol=1e-7), (a, b)


def call(logp, amask, rewards=None, **cfg_kw):
    b = 2 if logp is None else logp.shape[0]
    r = torch.ones(b, dtype=torch.float64) if rewards is None else rewards  # the output follows its dtype
    cfg = LikelihoodConfig(**cfg_kw)
    return likelihood(
        r,
        torch.ones(b, 3),
        cfg=cfg,
        group_id=None,
        lengths=None,
        truncated=None,
        max_length=3,
        answer_logp=logp,
        answer_mask=amask,
    )


def ragged(seed: int = 0, b: int = 6, a: int = 7):
    """Random log-probs in [-3, 0) on ragged answers of 1..a tokens; NaN garbage off the mask."""
    g = gen(seed)
    n = torch.tensor([7, 1, 4, 2, 6, 3][:b])
    amask = (torch.arange(a) < n.unsqueeze(-1)).double()  # [b, a]
    logp = -3.0 * torch.rand(b, a, generator=g, dtype=torch.float64)
    return torch.where(amask.bool(), logp, torch.full_like(logp, NAN)), amask, n


def test_prob_is_exp_of_log_prob_and_mean_log_prob_divides_by_length():
    logp, amask, n = ragged()
    r_log, _ = call(logp, amask, variant="log_prob")
    r_prob, _ = call(logp, amask, variant="prob")
    r_mean, _ = call(logp, amask, variant="mean_log_prob")
    close(r_prob, r_log.exp())
    close(r_mean, r_log / n.double())
    close(r_log, torch.nansum(logp, -1))


def test_avg_prob_is_at_least_the_geometric_mean_am_gm():
    logp, amask, n = ragged(seed=1)
    r_avg, _ = call(logp, amask, variant="avg_prob")
    r_prob, _ = call(logp, amask, variant="prob")
    geo = r_prob ** (1.0 / n.double())  # prod_t p_t ^ (1/T)
    assert torch.all(r_avg >= geo - 1e-12) and torch.any(r_avg > geo + 1e-6)
    equal = torch.log(torch.full((1, 4), 0.3, dtype=torch.float64))  # equal probabilities: AM = GM
    close(call(equal, torch.ones(1, 4), variant="avg_prob")[0], torch.tensor([0.3]).double())


def test_log_prob_is_additive_over_answer_tokens():
    logp, amask, _ = ragged(seed=2)
    first = amask * (torch.arange(7) < 3).double()  # the first 3 answer tokens
    rest = amask - first
    whole = call(logp, amask)[0]
    parts = call(logp, first)[0] + torch.where(rest.sum(-1) > 0, call(logp, rest)[0], torch.zeros(()).double())
    close(whole, parts)


@pytest.mark.parametrize("t", [1, 2, 5, 16, 64])
def test_t_tokens_of_probability_half_give_minus_t_ln_2(t):
    logp = torch.full((1, t), math.log(0.5), dtype=torch.float64)
    amask = torch.ones(1, t)
    assert call(logp, amask)[0].item() == pytest.approx(-t * math.log(2))
    assert call(logp, amask, variant="prob")[0].item() == pytest.approx(2.0**-t)  # vanishes exponentially
    assert call(logp, amask, variant="avg_prob")[0].item() == pytest.approx(0.5)  # RLPR's does not
    assert call(logp, amask, variant="mean_log_prob")[0].item() == pytest.approx(-math.log(2))


@pytest.mark.parametrize("variant", VARIANTS)
def test_padding_columns_change_nothing(variant):
    logp, amask, _ = ragged(seed=3)
    narrow = call(logp, amask, variant=variant)
    for garbage in (NAN, float("-inf"), 5.0):
        wide = call(pad(logp, garbage, n=3), pad(amask, 0.0, n=3), variant=variant)
        close(narrow[0], wide[0])
        assert narrow[1].keys() == wide[1].keys()
        for k in narrow[1]:
            close(narrow[1][k], wide[1][k])


def test_row_order_is_equivariant():
    logp, amask, _ = ragged(seed=4)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    out, m = call(logp, amask)
    out_p, m_p = call(logp[perm], amask[perm])
    close(out[perm], out_p)
    for k in m:
        close(m[k], m_p[k])


def test_combine_replace_and_add():
    logp = torch.log(torch.tensor([[0.5, 0.25], [1.0, 0.5]], dtype=torch.float64))
    amask = torch.ones(2, 2)
    r = torch.tensor([1.0, 0.0], dtype=torch.float64)
    big = -3 * math.log(2)  # log(0.5 * 0.25)
    small = -math.log(2)
    close(call(logp, amask, r)[0], torch.tensor([big, small]).double())  # replace, coef 1
    close(call(logp, amask, r, coef=0.5)[0], 0.5 * torch.tensor([big, small]).double())
    add = call(logp, amask, r, combine="add", coef=0.1)[0]
    close(add, r + 0.1 * torch.tensor([big, small]).double())
    assert torch.equal(call(logp, amask, r, combine="add", coef=0.0)[0], r)  # coef 0: the verifier's reward


def test_floor_empty_rows_and_metrics():
    logp = torch.log(torch.tensor([[0.01, 0.01], [0.9, 0.9], [0.5, 0.5]], dtype=torch.float64))
    amask = torch.tensor([[1.0, 1.0], [1.0, 1.0], [0.0, 0.0]])  # row 3: no answer token
    out, m = call(logp, amask, floor=-5.0)
    assert out.tolist() == pytest.approx([-5.0, 2 * math.log(0.9), 0.0])  # 2 ln 0.01 = -9.2 -> floored
    assert m["likelihood/frac_floored"].item() == pytest.approx(1 / 3)
    assert m["likelihood/frac_empty"].item() == pytest.approx(1 / 3)
    assert m["likelihood/answer_logp_mean"].item() == pytest.approx((2 * math.log(0.01) + 2 * math.log(0.9)) / 2)
    assert m["likelihood/token_prob_mean"].item() == pytest.approx((0.01 + 0.9) / 2)
    assert m["likelihood/reward_mean"].item() == pytest.approx((-5.0 + 2 * math.log(0.9)) / 3)
    assert call(logp, amask, empty=-7.0)[0][2].item() == -7.0
    for variant in VARIANTS:  # an empty row is finite in every variant (cfg.empty)
        out, m = call(logp, amask, variant=variant)
        assert torch.isfinite(out).all() and out[2].item() == 0.0
        assert all(torch.isfinite(v) and v.dim() == 0 and not v.requires_grad for v in m.values())
    assert call(logp, amask)[1]["likelihood/frac_floored"].item() == 0.0  # no floor: never floored
    out, m = call(torch.zeros(2, 0), torch.zeros(2, 0))  # no answer columns at all
    assert out.tolist() == [0.0, 0.0] and m["likelihood/frac_empty"].item() == 1.0


def test_reward_is_detached_and_metrics_match_the_registry():
    logp, amask, _ = ragged(seed=5)
    logp = torch.where(amask.bool(), logp, torch.zeros(())).requires_grad_()
    out, m = call(logp, amask, rewards=torch.ones(6, requires_grad=True), combine="add")
    assert not out.requires_grad
    assert sorted(m) == sorted(registry.lookup("reward_shaper", "likelihood").metrics)
    assert call(logp.float(), amask.float(), rewards=torch.ones(6))[0].dtype == torch.float32


def test_bad_config_and_inputs_raise():
    with pytest.raises(ValueError, match=r"variant must be one of \['log_prob'.*got 'logprob'"):
        LikelihoodConfig(variant="logprob")
    with pytest.raises(ValueError, match=r"combine must be one of \['replace', 'add'\], got 'mix'"):
        LikelihoodConfig(combine="mix")
    for coef in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="coef must be a finite number >= 0"):
            LikelihoodConfig(coef=coef)
    for floor in (0.5, float("-inf"), float("nan")):
        with pytest.raises(ValueError, match="floor must be None or a finite number <= 0"):
            LikelihoodConfig(floor=floor)
    with pytest.raises(ValueError, match=r"floor applies to the variants \['log_prob', 'mean_log_prob'\]"):
        LikelihoodConfig(variant="prob", floor=-1.0)
    with pytest.raises(ValueError, match="empty must be finite"):
        LikelihoodConfig(empty=float("-inf"))
    with pytest.raises(ValueError, match="needs answer_logp and answer_mask"):
        call(None, None)
    with pytest.raises(ValueError, match=r"answer_logp \(2, 3\) != answer_mask \(2, 2\)"):
        call(torch.zeros(2, 3), torch.ones(2, 2))
    with pytest.raises(ValueError, match=r"1 non-finite value\(s\) on answer tokens"):
        call(torch.tensor([[-1.0, NAN]]), torch.ones(1, 2))
