"""Numbers for the pure composer (``entrolab.update``) over tensors only: no model, no optimizer.

The batch is a hand-built ragged ``TokenBatch`` of B = 6 sequences (lengths 7, 3, 0, 1, 5, 2; one row empty, so
the seq-mean modes must leave it out) with the current policy's log-probs / entropies a small fp64 perturbation
of the behaviour ones. Every check is one the trainer relies on: right padding changes nothing, micro-batches
with the minibatch's ``Counts`` sum to the minibatch, a 0-dim regulariser is added once per minibatch,
masked tokens get exactly zero gradient, schedules route values to state or config and are checked at start-up,
and a batch-scope filter sees the minibatch whatever the micro-batch size.
"""

from __future__ import annotations

import pytest
import torch

from entrolab import registry
from entrolab.batch import TokenBatch
from entrolab.config import TrainConfig
from entrolab.methods.aggregation import ADDITIVE_MODES, AGG_MODES
from entrolab.trainer import TRAINER_METRICS
from entrolab.update import Counts, Methods, apply_filters, compose

NAN, INF = float("nan"), float("inf")
LENGTHS = (7, 3, 0, 1, 5, 2)
NORM_LEN = 16.0
METRIC_PREFIXES = ("eval/", "schedule/")  # as trainer.train passes them


def _batch(seed: int = 0, lengths=LENGTHS, t: int = 7) -> TokenBatch:
    """Ragged fp64 batch: rows of ``lengths`` tokens, groups of 2, advantages [B, 1], ref_logp in extras."""
    g = torch.Generator().manual_seed(seed)
    b = len(lengths)
    attended = (torch.arange(t) < torch.tensor(lengths).unsqueeze(-1)).double()  # [B, T]
    old = torch.where(attended.bool(), -torch.rand(b, t, generator=g, dtype=torch.float64) * 3, 0.0)  # [B, T]
    return TokenBatch(
        prompt_ids=torch.ones(b, 2, dtype=torch.long),
        prompt_mask=torch.ones(b, 2, dtype=torch.long),
        response_ids=torch.randint(3, 50, (b, t), generator=g) * attended.long(),
        attention_mask=attended,
        loss_mask=attended.clone(),
        old_logp=old,
        old_entropy=torch.where(attended.bool(), torch.rand(b, t, generator=g, dtype=torch.float64) * 2, 0.0),
        group_id=torch.arange(b // 2).repeat_interleave(2),
        truncated=torch.zeros(b, dtype=torch.bool),
        advantages=torch.randn(b, 1, generator=g, dtype=torch.float64),
        extras={"ref_logp": old - 0.1 * torch.rand(b, t, generator=g, dtype=torch.float64)},
    )


def _policy(batch: TokenBatch, seed: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Current log-probs and entropies (leaf tensors, requires_grad): the behaviour ones, perturbed.  [B, T] each"""
    g = torch.Generator().manual_seed(seed)
    logp = batch.old_logp + 0.2 * torch.randn(batch.old_logp.shape, generator=g, dtype=torch.float64)
    entropy = batch.old_entropy + 0.3 * torch.rand(batch.old_entropy.shape, generator=g, dtype=torch.float64)
    return logp.requires_grad_(), entropy.requires_grad_()


def _methods(**choice) -> Methods:
    return Methods(TrainConfig(**choice))


def _grads(loss: torch.Tensor, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """d loss / d inputs, zeros for an input the loss does not read (the entropy, without a regulariser)."""
    return torch.autograd.grad(loss, inputs, allow_unused=True, materialize_grads=True)


REG_CHOICES = [(), ("entropy_bonus",), ("entropy_bonus", "kl")]
REG_IDS = ["no_reg", "entropy_bonus", "entropy_bonus+kl"]


# ------------------------------------------------------------------------------------ (a) padding invariance


def _padded(batch: TokenBatch, n: int = 3) -> TokenBatch:
    """The batch with n more right-padding columns: masks 0 there, garbage in every float field."""

    def wide(x: torch.Tensor, value: float) -> torch.Tensor:
        return torch.cat([x, torch.full((x.shape[0], n), value, dtype=x.dtype)], 1)

    return batch.replace(
        response_ids=wide(batch.response_ids, 0),
        attention_mask=wide(batch.attention_mask, 0.0),
        loss_mask=wide(batch.loss_mask, 0.0),
        old_logp=wide(batch.old_logp, NAN),
        old_entropy=wide(batch.old_entropy, INF),
        extras={"ref_logp": wide(batch.extras["ref_logp"], -INF)},
    )


@pytest.mark.parametrize("regularizers", REG_CHOICES, ids=REG_IDS)
@pytest.mark.parametrize("mode", AGG_MODES)
def test_compose_is_invariant_to_right_padding(mode, regularizers):
    methods = _methods(aggregation=mode, regularizers=regularizers, options=("ppo_clip.dual_clip_c=3.0",))
    narrow = _batch()
    wide = _padded(narrow)
    assert Counts.of(wide, NORM_LEN) == Counts.of(narrow, NORM_LEN)
    logp, entropy = _policy(narrow)
    loss, metrics = compose(methods, narrow, logp, entropy, counts=Counts.of(narrow, NORM_LEN))
    grads = _grads(loss, logp, entropy)
    garbage = torch.tensor([[NAN, INF, -INF]], dtype=torch.float64).expand(6, 3)
    wide_logp = torch.cat([logp.detach(), garbage], 1).requires_grad_()
    wide_entropy = torch.cat([entropy.detach(), garbage], 1).requires_grad_()
    wide_loss, wide_metrics = compose(methods, wide, wide_logp, wide_entropy, counts=Counts.of(wide, NORM_LEN))
    wide_grads = _grads(wide_loss, wide_logp, wide_entropy)
    torch.testing.assert_close(wide_loss, loss, atol=1e-7, rtol=0)
    assert wide_metrics.keys() == metrics.keys()
    for k in metrics:
        torch.testing.assert_close(wide_metrics[k], metrics[k], atol=1e-7, rtol=0)
    for g, wg in zip(grads, wide_grads, strict=True):
        torch.testing.assert_close(wg[:, :7], g, atol=1e-7, rtol=0)
        assert torch.all(wg[:, 7:] == 0)  # exact zeros on the padding, garbage or not


# ------------------------------------------------------------------------------------- (b) micro-batching


@pytest.mark.parametrize("micro_batch_size", [1, 2, 4, 5])
@pytest.mark.parametrize("regularizers", REG_CHOICES, ids=REG_IDS)
@pytest.mark.parametrize("mode", ADDITIVE_MODES)
def test_micro_batches_with_minibatch_counts_sum_to_the_minibatch(mode, regularizers, micro_batch_size):
    methods = _methods(aggregation=mode, regularizers=regularizers)
    batch = _batch(1)
    counts = Counts.of(batch, NORM_LEN)
    assert (counts.num_tokens, counts.num_seqs) == (18.0, 5.0)  # 7 + 3 + 0 + 1 + 5 + 2 tokens; the empty row
    logp, entropy = _policy(batch)
    whole, _ = compose(methods, batch, logp, entropy, counts=counts)
    whole_grads = _grads(whole, logp, entropy)
    total = torch.zeros((), dtype=torch.float64)
    widths = []
    for rows, micro in batch.micro_batches(micro_batch_size):
        widths.append(micro.width)
        part, _ = compose(methods, micro, logp[rows, : micro.width], entropy[rows, : micro.width], counts=counts)
        total = total + part
    parts_grads = _grads(total, logp, entropy)
    if micro_batch_size == 2:
        assert widths == [7, 1, 5]  # each micro-batch trimmed to its own longest response
    torch.testing.assert_close(total, whole, atol=1e-12, rtol=0)
    for gp, gw in zip(parts_grads, whole_grads, strict=True):
        torch.testing.assert_close(gp, gw, atol=1e-12, rtol=0)


# ----------------------------------------------------------------------------- (c) a 0-dim regulariser term

SCALAR = 0.6
SLOPE = 0.25


def _scalar_term(logp, mask, *, cfg, entropy, old_logp, ref_logp):
    """A batch-scalar regulariser: 0.6 + 0.25 * (sum of the masked log-probs), a 0-dim tensor."""
    term = SCALAR + SLOPE * torch.where(mask.bool(), logp, 0.0).sum()  # []
    return term, {"test/scalar_term": term.detach()}


@pytest.fixture()
def scalar_reg(monkeypatch):
    """A user regulariser registered (for this test only) under a name no built-in uses."""
    name = "test_update_scalar_term"
    entry = registry.Entry(
        axis="regularizer",
        name=name,
        fn=_scalar_term,
        config=None,
        paper="",
        summary="a 0-dim term",
        metrics=("test/scalar_term",),
    )
    monkeypatch.setitem(registry._REGISTRY["regularizer"], name, entry)
    return name


@pytest.mark.parametrize("mode", AGG_MODES)
def test_scalar_regulariser_is_added_once_weighted_by_sequence_share(mode, scalar_reg):
    with_term = _methods(aggregation=mode, regularizers=(scalar_reg,))
    without = _methods(aggregation=mode)
    batch = _batch(2)
    counts = Counts.of(batch, NORM_LEN)
    logp, entropy = _policy(batch)
    # Whole minibatch: the term is added exactly once (share 5 / 5).
    a, metrics = compose(with_term, batch, logp, entropy, counts=counts)
    b, _ = compose(without, batch, logp, entropy, counts=counts)
    masked_sum = torch.where(batch.loss_mask.bool(), logp, 0.0).sum()
    torch.testing.assert_close(a - b, SCALAR + SLOPE * masked_sum, atol=1e-12, rtol=0)
    assert metrics["test/scalar_term"].item() == pytest.approx((SCALAR + SLOPE * masked_sum).item())
    # Micro-batches of 4: rows 0-3 hold 3 non-empty sequences, rows 4-5 hold 2; shares 3/5 and 2/5.
    shares, extra, slope_part = [], torch.zeros((), dtype=torch.float64), 0.0
    for rows, micro in batch.micro_batches(4):
        lp, en = logp[rows, : micro.width], entropy[rows, : micro.width]
        diff = compose(with_term, micro, lp, en, counts=counts)[0] - compose(without, micro, lp, en, counts=counts)[0]
        share = float((micro.loss_mask.sum(-1) > 0).sum()) / counts.num_seqs
        term = SCALAR + SLOPE * torch.where(micro.loss_mask.bool(), lp, 0.0).sum()
        torch.testing.assert_close(diff, share * term, atol=1e-12, rtol=0)
        shares.append(share)
        extra = extra + diff
        slope_part += share * SLOPE * torch.where(micro.loss_mask.bool(), lp, 0.0).sum().item()
    assert shares == [3 / 5, 2 / 5]
    (grad,) = torch.autograd.grad(extra, logp)
    # d/dlogp of sum_k share_k * SLOPE * sum_{micro k} logp: SLOPE x the share of the token's micro-batch.
    expected = SLOPE * batch.loss_mask * torch.tensor([3 / 5] * 4 + [2 / 5] * 2, dtype=torch.float64).unsqueeze(-1)
    torch.testing.assert_close(grad, expected, atol=1e-12, rtol=0)
    # The constant part adds up to SCALAR over the micro-batches: once per minibatch, not once per micro-batch.
    assert extra.item() - slope_part == pytest.approx(SCALAR, abs=1e-12)


def test_scalar_regulariser_with_k_equal_micro_batches_adds_term_over_k(scalar_reg):
    # 4 non-empty rows in 2 micro-batches of 2: each adds term / 2 (verl's loss_scale_factor).
    batch = _batch(3, lengths=(2, 1, 3, 2))
    counts = Counts.of(batch, NORM_LEN)
    zero = torch.zeros(4, 3, dtype=torch.float64, requires_grad=True)  # logp = 0: the term is SCALAR exactly
    with_term = _methods(regularizers=(scalar_reg,))
    without = _methods()
    for rows, micro in batch.micro_batches(2):
        lp, en = zero[rows, : micro.width], zero[rows, : micro.width]
        diff = compose(with_term, micro, lp, en, counts=counts)[0] - compose(without, micro, lp, en, counts=counts)[0]
        assert diff.item() == pytest.approx(SCALAR / 2, abs=1e-15)


# ----------------------------------------------------------------------- (d) masked tokens and gradient sign


@pytest.mark.parametrize("regularizers", REG_CHOICES, ids=REG_IDS)
@pytest.mark.parametrize("mode", AGG_MODES)
def test_masked_tokens_get_exactly_zero_gradient(mode, regularizers):
    batch = _batch(4)
    # A filter dropped tokens (0, 2), (1, 0) and (4, 3): attended but not trained on.
    loss_mask = batch.loss_mask.clone()
    loss_mask[0, 2] = loss_mask[1, 0] = loss_mask[4, 3] = 0.0
    batch = batch.replace(loss_mask=loss_mask)
    logp, entropy = _policy(batch)
    methods = _methods(aggregation=mode, regularizers=regularizers, options=("ppo_clip.dual_clip_c=3.0",))
    loss, _ = compose(methods, batch, logp, entropy, counts=Counts.of(batch, NORM_LEN))
    grad_logp, grad_entropy = _grads(loss, logp, entropy)
    dropped, trained = (batch.attention_mask == 1) & (loss_mask == 0), loss_mask == 1
    assert int(dropped.sum()) == 3
    for grad in (grad_logp, grad_entropy):
        assert torch.all(grad[loss_mask == 0] == 0) and torch.isfinite(grad).all()
    assert int((grad_logp[trained] != 0).sum()) > int(trained.sum()) // 2  # (PPO clips some; most still move)
    if "entropy_bonus" in regularizers:
        assert torch.all(grad_entropy[trained] != 0)  # the bonus reaches every trained token


@pytest.mark.parametrize("mode", AGG_MODES)
def test_positive_advantage_lowers_the_loss_when_logp_rises(mode):
    batch = _batch(5)
    adv = torch.tensor([[1.5], [-0.5], [2.0], [-1.0], [0.7], [-2.0]], dtype=torch.float64)
    batch = batch.replace(advantages=adv)
    logp = batch.old_logp.clone().requires_grad_()  # on-policy: ratio 1, nothing clipped
    entropy = batch.old_entropy.clone()
    methods = _methods(aggregation=mode)
    counts = Counts.of(batch, NORM_LEN)
    loss, _ = compose(methods, batch, logp, entropy, counts=counts)
    (grad,) = torch.autograd.grad(loss, logp)
    real = batch.loss_mask.bool()
    positive = real & (adv > 0)
    negative = real & (adv < 0)
    assert torch.all(grad[positive] < 0) and torch.all(grad[negative] > 0)
    # A finite step up on one token of a positive-advantage row lowers the loss; of a negative one raises it.
    for row, sign in ((0, -1), (3, 1)):
        bumped = logp.detach().clone()
        bumped[row, 0] += 1e-3
        after, _ = compose(methods, batch, bumped, entropy, counts=counts)
        assert torch.sign(after - loss.detach()).item() == sign


# --------------------------------------------------------------------------- (e) Methods.configured routing


def test_configured_routes_declared_state_names_to_state_and_the_rest_to_config():
    methods = _methods(regularizers=("siren",), schedules=("siren_anchor",))
    step = methods.configured({"siren.anchor": 1.25, "siren.coef": 0.3})
    (entry, cfg), *_ = step.regularizers
    assert entry.name == "siren" and "anchor" in entry.state
    assert step.state == {"siren": {"anchor": 1.25}}
    assert cfg.coef == 0.3 and not hasattr(cfg, "anchor")
    assert methods.state == {} and methods.regularizers[0][1].coef == 0.005  # the original is untouched
    assert methods.configured({}) is methods
    safe = _methods(regularizers=("safe",), schedules=("safe_pid",))
    step = safe.configured({"safe.threshold": 0.5, "safe.kl_prev": 0.1})
    assert step.state == {"safe": {"threshold": 0.5, "kl_prev": 0.1}}
    assert step.regularizers[0][1] == safe.regularizers[0][1]  # no config field changed
    # A config field of the policy loss and of the advantage go to their configs.
    step = methods.configured({"ppo_clip.eps_high": 0.28, "grpo.eps": 1e-4})
    assert step.policy_loss[1].eps_high == 0.28 and step.advantage[1].eps == 1e-4 and step.state == {}
    with pytest.raises(ValueError, match=r"a schedule sets options of \['kl'\], which this run does not use"):
        methods.configured({"kl.coef": 0.1})


def test_configured_state_accumulates_across_steps_without_aliasing():
    methods = _methods(regularizers=("safe",), schedules=("safe_pid",))
    first = methods.configured({"safe.threshold": 0.5})
    second = first.configured({"safe.kl_prev": 0.2})
    assert first.state == {"safe": {"threshold": 0.5}}
    assert second.state == {"safe": {"threshold": 0.5, "kl_prev": 0.2}}


# ----------------------------------------------------------------------- (f) Methods.check_schedules errors


def _check(**choice) -> None:
    _methods(**choice).check_schedules(TRAINER_METRICS, METRIC_PREFIXES)


@pytest.mark.parametrize(
    ("choice", "match"),
    [
        (
            dict(schedules=("siren_anchor",)),
            r"^schedule 'siren_anchor' sets 'siren\.anchor', but this run does not use 'siren' "
            r"\(selected: \['grpo', 'ppo_clip'\]\)$",
        ),
        (
            dict(schedules=("safe_pid",), regularizers=("kl",)),
            r"^schedule 'safe_pid' sets 'safe\.threshold', but this run does not use 'safe'",
        ),
        (
            dict(
                regularizers=("entropy_bonus",),
                schedules=("adaptive_entropy",),
                options=("adaptive_entropy.field=entropy_bonus.temperature",),
            ),
            r"^schedule 'adaptive_entropy' sets 'entropy_bonus\.temperature', but 'entropy_bonus' has no option or "
            r"state 'temperature'; allowed: \['coef'\]$",
        ),
        (
            dict(
                regularizers=("siren",),
                schedules=("siren_anchor",),
                options=("siren_anchor.observe=entropy/never_logged",),
            ),
            r"^schedule 'siren_anchor' reads metric 'entropy/never_logged', which this run never logs; logged: \[",
        ),
        (
            dict(
                regularizers=("entropy_bonus",),
                schedules=("adaptive_entropy",),
                options=("adaptive_entropy.observe=x",),
            ),
            r"^schedule 'adaptive_entropy' reads metric 'x', which this run never logs",
        ),
    ],
)
def test_check_schedules_raises_one_line(choice, match):
    with pytest.raises(ValueError, match=match) as err:
        _check(**choice)
    assert "\n" not in str(err.value)


def test_check_schedules_accepts_what_the_run_uses_and_logs():
    _check(regularizers=("siren",), schedules=("siren_anchor",))  # reads siren's own entropy/topp_peak_mean
    _check(regularizers=("safe", "kl"), schedules=("safe_pid",))  # reads reward/mean and kl's kl/ref_k1_mean
    _check(regularizers=("entropy_bonus",), schedules=("adaptive_entropy",))  # reads the trainer's entropy/token_mean
    _check(
        regularizers=("entropy_bonus",),
        schedules=("adaptive_entropy",),
        options=("adaptive_entropy.observe=eval/pass@1",),  # a prefix the trainer logs under
    )


# ----------------------------------------------------------------------------- (g) batch-scope token filters


def _filter_batch() -> TokenBatch:
    batch = _batch(6, lengths=(7, 6, 5, 7, 4, 7), t=7)
    return batch.replace(advantages=torch.tensor([[1.0], [-1.0], [0.5], [-2.0], [1.5], [-0.5]], dtype=torch.float64))


@pytest.mark.parametrize(
    ("token_filter", "options"),
    [
        ("forking_tokens", ("forking_tokens.scope=batch", "forking_tokens.rho=0.3")),
        ("low_entropy_tokens", ("low_entropy_tokens.scope=batch", "low_entropy_tokens.rho=0.4")),
        ("discriminator_clip", ("discriminator_clip.scope=batch", "discriminator_clip.mu=0.5")),
        ("clip_cov", ("clip_cov.scope=batch", "clip_cov.ratio=0.2", "clip_cov.cov_lb=-1e9", "clip_cov.cov_ub=1e9")),
    ],
)
def test_batch_scope_filter_is_independent_of_micro_batch_size(token_filter, options):
    methods = _methods(token_filters=(token_filter,), options=options)
    batch = _filter_batch()
    whole, whole_metrics = apply_filters(methods, batch, None, torch.Generator().manual_seed(3))
    split, split_metrics = apply_filters(methods, batch, 4, torch.Generator().manual_seed(3))
    assert torch.equal(split.loss_mask, whole.loss_mask)
    assert torch.equal(split.weight, whole.weight)
    dropped = int((whole.loss_mask != batch.loss_mask).sum()) + int((whole.weight != 1).sum())
    assert 0 < dropped < int(batch.loss_mask.sum())  # the filter did something, and not everything
    assert split_metrics.keys() == whole_metrics.keys()


def test_micro_batch_scope_filter_depends_on_micro_batch_size():
    # The control for the test above: scope="micro_batch" takes each micro-batch's own threshold.
    methods = _methods(token_filters=("forking_tokens",), options=("forking_tokens.rho=0.3",))
    batch = _filter_batch()
    whole, _ = apply_filters(methods, batch, None)
    split, _ = apply_filters(methods, batch, 4)
    assert not torch.equal(split.loss_mask, whole.loss_mask)
    kept = [int(split.loss_mask[sl].sum()) for sl in (slice(0, 4), slice(4, 6))]
    assert kept == [8, 4]  # int(0.3 * n + 0.9999) of the 25 and 11 tokens of each micro-batch


def test_bnpo_is_token_mean_on_one_micro_batch_and_averages_micro_batch_means_otherwise():
    from entrolab.methods.aggregation import aggregate

    loss = torch.tensor([[1.0, 2, 3], [4, 5, 6], [7, 8, 9], [1, 1, 1]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1, 0], [1, 0, 0], [1, 1, 1], [0, 0, 0]], dtype=torch.float64)
    whole = aggregate(loss, mask, "bnpo")
    torch.testing.assert_close(whole, aggregate(loss, mask, "token-mean"), atol=1e-12, rtol=0)  # 31 / 6
    # two micro-batches of two rows (TRL: each micro-batch's token mean / gradient_accumulation_steps)
    parts = [aggregate(loss[r], mask[r], "bnpo", num_seqs=3) for r in (slice(0, 2), slice(2, 4))]
    # rows 0-1: mean 7/3 over 2 of the 3 non-empty rows; rows 2-3: mean 8 over 1 of 3
    torch.testing.assert_close(sum(parts), torch.tensor(7 / 3 * 2 / 3 + 8 / 3, dtype=torch.float64))
