"""The first-order entropy identities of a softmax policy, as property tests over random logits (small V).

Notation: one state, logits z in R^V, pi = softmax(z), H(z) = -sum_k pi_k log pi_k. Differentiating,

    d pi_j / d z_k = pi_j (1[j = k] - pi_k)
    d H / d z_k    = -sum_j (log pi_j + 1) pi_j (1[j = k] - pi_k) = -pi_k (log pi_k + H)          (*)

(using sum_j pi_j (log pi_j + 1) = 1 - H). Every identity below is (*) contracted with a logit step dz:

    dH = -sum_k pi_k (log pi_k + H) dz_k = -Cov_{k~pi}(log pi_k, dz_k)                          (I1)

because Cov_pi(log pi, dz) = sum_k pi_k log pi_k dz_k - (sum_k pi_k log pi_k)(sum_k pi_k dz_k)
= sum_k pi_k (log pi_k + H) dz_k. Each test checks the closed form against a central finite difference
(H(z + e dz) - H(z - e dz)) / (2e) in float64 (error O(e^2)) and against autograd, to 1e-4 relative.
"""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from entrolab import ops

RTOL, ATOL, EPS = 1e-4, 1e-9, 1e-5

logit_vectors = st.integers(2, 8).flatmap(
    lambda v: st.lists(st.floats(-4.0, 4.0, allow_nan=False, allow_infinity=False), min_size=v, max_size=v)
)


def _z(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def _entropy(z: torch.Tensor) -> torch.Tensor:
    """H in float64 (``ops.entropy_from_logits`` computes in fp32, too coarse for finite differences)."""
    logp = torch.log_softmax(z, -1)
    return -(logp.exp() * logp).sum(-1)


def _directional(z: torch.Tensor, dz: torch.Tensor, eps: float = EPS) -> float:
    """Central finite difference of H along dz."""
    return ((_entropy(z + eps * dz) - _entropy(z - eps * dz)) / (2 * eps)).item()


def _cov(a: torch.Tensor, b: torch.Tensor, pi: torch.Tensor) -> float:
    """Cov_{k~pi}(a_k, b_k)."""
    return ((pi * a * b).sum() - (pi * a).sum() * (pi * b).sum()).item()


def _close(got: float, want: float) -> bool:
    return abs(got - want) <= ATOL + RTOL * abs(want)


@settings(max_examples=60, deadline=None)
@given(logit_vectors, st.data())
def test_first_order_entropy_change_is_minus_covariance(values, data):
    """(I1), Cui et al. arXiv:2505.22617: dH = -Cov_{a~pi}(log pi(a), dz_a) for any small logit step dz."""
    z = _z(values)
    dz = _z(data.draw(st.lists(st.floats(-1.0, 1.0), min_size=len(values), max_size=len(values))))
    pi = torch.softmax(z, -1)
    assert abs(ops.entropy_from_logits(z).item() - _entropy(z).item()) < 1e-5  # the library's entropy
    want = -_cov(torch.log(pi), dz, pi)
    assert _close(_directional(z, dz), want)
    zz = z.clone().requires_grad_()
    (grad,) = torch.autograd.grad(_entropy(zz), zz)
    assert _close((grad * dz).sum().item(), want)


@settings(max_examples=60, deadline=None)
@given(logit_vectors, st.data())
def test_raising_one_logit_changes_entropy_by_minus_pi_k_log_pi_k_plus_h(values, data):
    """(*) with dz = e_k: dH/dz_k = -pi_k (log pi_k + H) (Wang et al.'s S_k, arXiv:2602.03392), so a token
    above the "entropy line" log pi_k > -H lowers entropy when its logit rises, one below raises it."""
    z = _z(values)
    k = data.draw(st.integers(0, len(values) - 1))
    pi, h = torch.softmax(z, -1), _entropy(z).item()
    want = -(pi[k] * (torch.log(pi[k]) + h)).item()
    e_k = torch.zeros_like(z)
    e_k[k] = 1.0
    assert _close(_directional(z, e_k), want)
    zz = z.clone().requires_grad_()
    (grad,) = torch.autograd.grad(_entropy(zz), zz)
    assert _close(grad[k].item(), want)


@settings(max_examples=60, deadline=None)
@given(logit_vectors, st.data())
def test_vanilla_pg_step_on_one_sampled_token(values, data):
    """A vanilla policy-gradient step with learning rate eta on one sampled token a with advantage A.

    The loss -A log pi_a has gradient -A (e_a - pi) w.r.t. z (checked with autograd), so the step is
    dz = eta A (e_a - pi) and, by (I1),

        dH = -eta A Cov_pi(log pi, e_a - pi) = -eta A (S_a - E_{j~pi} S_j),   S_j = pi_j (log pi_j + H)

    (the GRPO-style form of Wang et al.; E_pi S = sum_j pi_j^2 (log pi_j + H)).
    """
    z = _z(values)
    a = data.draw(st.integers(0, len(values) - 1))
    adv = data.draw(st.floats(-2.0, 2.0).filter(lambda x: abs(x) > 1e-3))
    eta = 1e-3
    zz = z.clone().requires_grad_()
    (grad,) = torch.autograd.grad(-adv * torch.log_softmax(zz, -1)[a], zz)
    pi = torch.softmax(z, -1)
    e_a = torch.zeros_like(z)
    e_a[a] = 1.0
    torch.testing.assert_close(-grad, adv * (e_a - pi))
    dz = -eta * grad  # one SGD step on the loss
    h = _entropy(z).item()
    s = pi * (torch.log(pi) + h)
    want = -eta * adv * (s[a] - (pi * s).sum()).item()
    assert _close(-eta * adv * _cov(torch.log(pi), e_a - pi, pi), want)
    assert _close(_directional(z, dz / eta) * eta, want)


@settings(max_examples=60, deadline=None)
@given(logit_vectors, st.data())
def test_expected_softmax_pg_step_entropy_mechanism(values, data):
    """Cui et al. (arXiv:2505.22617, softmax policy gradient): the exact policy gradient of E_{a~pi}[A(a)]
    w.r.t. the logits is pi (A - E_pi A) (autograd), i.e. the expectation over a ~ pi of the sampled-token
    step above. With an advantage (E_pi A = 0) the step is dz = eta pi A and

        dH = -eta Cov_{a~pi}(log pi(a), pi(a) A(a)).

    For an A that is not centred under pi (e.g. group-normalised rewards), the step is eta pi (A - Abar) and
    the paper's form is off by eta Abar Cov_pi(log pi, pi), which is checked too.
    """
    z = _z(values)
    a_raw = _z(data.draw(st.lists(st.floats(-2.0, 2.0), min_size=len(values), max_size=len(values))))
    pi = torch.softmax(z, -1)
    zz = z.clone().requires_grad_()
    (grad,) = torch.autograd.grad((torch.softmax(zz, -1) * a_raw).sum(), zz)
    a_bar = (pi * a_raw).sum()
    torch.testing.assert_close(grad, pi * (a_raw - a_bar))
    eta, logpi = 1e-3, torch.log(pi)
    adv = a_raw - a_bar  # centred under pi: an advantage
    want = -eta * _cov(logpi, pi * adv, pi)
    assert _close(_directional(z, pi * adv) * eta, want)
    naive = -eta * _cov(logpi, pi * a_raw, pi)  # the paper's form applied to the uncentred A
    assert _close(want, naive + eta * a_bar.item() * _cov(logpi, pi, pi))


@settings(max_examples=60, deadline=None)
@given(logit_vectors, st.data())
def test_natural_pg_step(values, data):
    """Natural policy gradient for a tabular softmax moves each logit by its advantage, dz = eta A, so by (I1)
    dH = -eta Cov_{a~pi}(log pi(a), A(a)) (Cui et al.): entropy falls when high-probability actions have
    high advantage."""
    z = _z(values)
    adv = _z(data.draw(st.lists(st.floats(-2.0, 2.0), min_size=len(values), max_size=len(values))))
    pi = torch.softmax(z, -1)
    assert _close(_directional(z, adv), -_cov(torch.log(pi), adv, pi))


def test_note_numeric_example():
    """Hand-computed: z = [2, 1, 0, -1] -> pi = [.6439, .2369, .0871, .0321], H = .9475,
    S = [.3267, -.1167, -.1301, -.0799], E_pi S = .1688; finite differences match -S_k and -(S_k - E_pi S)."""
    z = _z([2.0, 1.0, 0.0, -1.0])
    pi = torch.softmax(z, -1)
    h = _entropy(z).item()
    s = pi * (torch.log(pi) + h)
    torch.testing.assert_close(pi, _z([0.6439, 0.2369, 0.0871, 0.0321]), atol=5e-5, rtol=0)
    assert math.isclose(h, 0.9475, abs_tol=5e-5)
    torch.testing.assert_close(s, _z([0.3267, -0.1167, -0.1301, -0.0799]), atol=1e-4, rtol=0)
    assert math.isclose((pi * s).sum().item(), 0.1688, abs_tol=5e-5)
    for k in range(4):
        e_k = torch.zeros(4, dtype=torch.float64)
        e_k[k] = 1.0
        assert _close(_directional(z, e_k), -s[k].item())
        assert _close(_directional(z, e_k - pi), -(s[k] - (pi * s).sum()).item())


def test_first_order_error_is_second_order():
    """The identities are first order: the one-sided error H(z + e dz) - H(z) - e dH shrinks ~4x when e halves."""
    z, dz = _z([1.5, -0.3, 0.2, 0.9, -2.0]), _z([0.4, -1.0, 0.3, 0.8, -0.2])
    pi = torch.softmax(z, -1)
    first = -_cov(torch.log(pi), dz, pi)
    errors = [(_entropy(z + e * dz) - _entropy(z)).item() - e * first for e in (1e-3, 5e-4)]
    assert 3.5 < errors[0] / errors[1] < 4.5
