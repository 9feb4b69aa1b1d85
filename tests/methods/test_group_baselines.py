"""OPO, the pass@G max baseline and GPG: hand-computed baselines, reductions to Dr.GRPO / GRPO, invariances.

Parity with verl's ``opo``, ``grpo_passk`` and ``gpg``: ``tests/test_parity_advantages.py``.
"""

from __future__ import annotations

import pytest
import torch

from entrolab import ops, registry
from entrolab.methods.advantages import GRPOConfig, dr_grpo, grpo
from entrolab.methods.group_baselines import GPGConfig, GrpoPasskConfig, gpg, grpo_passk, opo
from tests import test_contract as contract
from tests.methods._helpers import pad

GID = ops.contiguous_groups(8, 4)
R = torch.tensor([1.0, 0, 0, 1, 0.5, 0.5, 0.5, 0.5])  # one group with a spread, one constant


def _flat(out) -> list[float]:
    return out[0].squeeze(1).tolist()


def test_opo_closed_form_length_weighted_baseline():
    # lengths 4, 1, 2, 1 and rewards 1, 0, 0, 1: b = (4 + 1) / 8
    mask = torch.tensor([[1.0, 1, 1, 1], [1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 0, 0]])
    adv, m = opo(torch.tensor([1.0, 0, 0, 1]), mask, cfg=None, group_id=torch.zeros(4).long())
    assert adv.squeeze(1).tolist() == [1 - 0.625, -0.625, -0.625, 1 - 0.625]
    assert m["adv/frac_zero_std_groups"].item() == 0.0


def test_opo_reduces_to_dr_grpo_at_equal_lengths_and_handles_empty_groups():
    g = torch.Generator().manual_seed(0)
    r = torch.randn(8, generator=g)
    torch.testing.assert_close(
        opo(r, torch.ones(8, 3), cfg=None, group_id=GID)[0], dr_grpo(r, torch.ones(8, 3), cfg=None, group_id=GID)[0]
    )
    mask = torch.ones(8, 3)
    mask[4:] = 0  # every response of group 2 is empty: baseline 0 (verl divides 0 by 0)
    adv, _ = opo(r, mask, cfg=None, group_id=GID)
    torch.testing.assert_close(adv[4:].squeeze(1), r[4:])


def test_passk_only_the_best_sample_is_credited():
    r = torch.tensor([0.2, 0.9, 0.5, 0.1, 1.0, 1.0, 0.0, 0.0])  # group 2: the best reward is tied
    adv = _flat(grpo_passk(r, torch.ones(8, 2), cfg=GrpoPasskConfig(), group_id=GID))
    assert adv == pytest.approx([0.0, 0.9 - 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    normed = _flat(grpo_passk(r, torch.ones(8, 2), cfg=GrpoPasskConfig(norm_by_std=True), group_id=GID))
    assert normed[1] == pytest.approx(0.4 / (r[:4].std().item() + 1e-6))
    assert normed[4:] == [0.0] * 4


@pytest.mark.parametrize("seed", range(3))
def test_passk_is_the_leave_one_out_max(seed):
    # the paper's k = n estimator: A_i = max_j r_j - max_{j != i} r_j, brute force; rows shuffled
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(12, generator=g, dtype=torch.float64)
    gid = ops.contiguous_groups(12, 4)[torch.randperm(12, generator=g)]
    adv = grpo_passk(r, torch.ones(12, 1), cfg=GrpoPasskConfig(), group_id=gid)[0].squeeze(1)
    for i in range(12):
        rest = r[(gid == gid[i]) & (torch.arange(12) != i)]
        assert adv[i].item() == pytest.approx((r[gid == gid[i]].max() - rest.max()).item())


def test_gpg_alpha_modes():
    # group 1 has a spread, group 2 is constant: M = 4 of B = 8 -> alpha = 2; non-zero rewards: 6 -> 8 / 6
    adv, m = gpg(R, torch.ones(8, 2), cfg=GPGConfig(), group_id=GID)
    assert adv.squeeze(1).tolist() == [1.0, -1.0, -1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert m["gpg/alpha"].item() == 2.0
    _, m = gpg(R, torch.ones(8, 2), cfg=GPGConfig(alpha="nonzero_rewards"), group_id=GID)
    assert m["gpg/alpha"].item() == pytest.approx(8 / 6)
    # every group constant: only zeros, alpha's denominator clamped
    adv, m = gpg(torch.ones(8), torch.ones(8, 2), cfg=GPGConfig(), group_id=GID)
    assert torch.all(adv == 0) and m["gpg/alpha"].item() == 8.0


def test_gpg_reduces_to_dr_grpo_and_grpo():
    g = torch.Generator().manual_seed(1)
    r, mask = torch.randn(8, generator=g), torch.ones(8, 2)
    plain, m = gpg(r, mask, cfg=GPGConfig(alpha="none"), group_id=GID)
    torch.testing.assert_close(plain, dr_grpo(r, mask, cfg=None, group_id=GID)[0])
    assert m["gpg/alpha"].item() == 1.0
    std, _ = gpg(r, mask, cfg=GPGConfig(alpha="none", f_norm="std"), group_id=GID)
    torch.testing.assert_close(std, grpo(r, mask, cfg=GRPOConfig(eps=1e-4), group_id=GID)[0])
    valid, _ = gpg(r, mask, cfg=GPGConfig(), group_id=GID)  # no constant group: alpha = 1
    torch.testing.assert_close(valid, plain)


@pytest.mark.parametrize(
    ("fn", "cfg"),
    [(opo, None), (grpo_passk, GrpoPasskConfig()), (gpg, GPGConfig()), (gpg, GPGConfig(alpha="nonzero_rewards"))],
)
def test_row_shuffle_and_padding_columns_change_nothing(fn, cfg):
    g = torch.Generator().manual_seed(2)
    mask = (torch.arange(5) < torch.tensor([5, 2, 0, 4, 1, 3, 5, 2]).unsqueeze(-1)).float()
    r, perm = torch.randn(8, generator=g), torch.randperm(8, generator=g)
    adv, m = fn(r, mask, cfg=cfg, group_id=GID)
    shuffled, ms = fn(r[perm], mask[perm], cfg=cfg, group_id=GID[perm])
    wide, mw = fn(r, pad(mask, 0.0, 3), cfg=cfg, group_id=GID)
    torch.testing.assert_close(shuffled, adv[perm])
    assert torch.equal(wide, adv)
    for k in m:
        torch.testing.assert_close(ms[k], m[k])
        torch.testing.assert_close(mw[k], m[k])


def test_detached_and_bad_configs():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0], requires_grad=True)
    for fn, cfg in ((opo, None), (grpo_passk, GrpoPasskConfig()), (gpg, GPGConfig())):
        assert not fn(r, torch.ones(4, 2), cfg=cfg, group_id=ops.contiguous_groups(4, 2))[0].requires_grad
        with pytest.raises(ValueError, match=">= 2 samples per group, got 1"):
            fn(r, torch.ones(4, 2), cfg=cfg, group_id=torch.arange(4))
    with pytest.raises(ValueError, match=r"gpg alpha must be one of \['valid_fraction', .*got 'batch'"):
        GPGConfig(alpha="batch")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"gpg f_norm must be one of \['one', 'std'\], got 'mad'"):
        GPGConfig(f_norm="mad")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"gpg eps must be >= 0, got -0\.1"):
        GPGConfig(eps=-0.1)
    with pytest.raises(ValueError, match="grpo_passk eps must be >= 0, got -1"):
        GrpoPasskConfig(eps=-1)


@pytest.mark.parametrize("name", ["opo", "grpo_passk", "gpg"])
def test_keeps_the_catalogue_contract(name):
    entry = registry.lookup("advantage", name)
    contract.test_every_registered_method_keeps_the_contract(entry)
    contract.test_signature_follows_the_axis_convention(entry)
