"""Best-of-N against KL-regularised RL, exactly, over a finite support: the maths behind the report's BoN columns.

Yang, Salamatian, Sun, Suresh & Beirami (arXiv:2404.01730) show that best-of-N sampling from a reference p by
a reward r is asymptotically equivalent to the KL-RL optimum, the exponential tilt phi_beta = p e^{r/beta} / Z,
matching it in expected reward and in KL at KL ~ log N. The often-quoted KL(pi_N || p) = log N - (N - 1)/N is an
upper bound (Beirami et al., arXiv:2401.01879), tight when r has no atoms. Everything here is exact on a
finite support ``p [M]`` with rewards ``r [M]``, in float64: the best-of-N distribution (ties included), its
KL, the tilt's (phi, KL, E[r]), the continuous win rate N/(N+1), and the N whose bound equals a measured KL.
"""

from __future__ import annotations

import math

import torch


def _support(p: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(p, r)`` as float64 1-D tensors, checked: same length, p >= 0, sum p = 1 (to 1e-6)."""
    p, r = torch.as_tensor(p, dtype=torch.float64), torch.as_tensor(r, dtype=torch.float64)
    if p.dim() != 1 or p.shape != r.shape or p.numel() == 0:
        raise ValueError(f"p and r must be non-empty [M] tensors of one length, got {tuple(p.shape)}, {tuple(r.shape)}")
    if bool((p < 0).any()) or not bool(torch.isfinite(p).all() & torch.isfinite(r).all()):
        raise ValueError("p must be finite and >= 0, and r finite")
    if abs(float(p.sum()) - 1.0) > 1e-6:
        raise ValueError(f"p must sum to 1, got {float(p.sum())}")
    return p / p.sum(), r  # renormalised in float64 (a float32 p sums to 1 only to ~1e-7)


def _kl(q: torch.Tensor, p: torch.Tensor) -> float:
    """KL(q || p) = sum_{q > 0} q log(q / p) (q must vanish where p does)."""
    pos = q > 0
    return float((q[pos] * (q[pos].log() - p[pos].log())).sum())


def bon_kl_bound(n: float) -> float:
    """KL(pi_N || p) <= log N - (N - 1)/N (Beirami et al., arXiv:2401.01879; equality without atoms).

    Args:
        n: N >= 1 (real values allowed, for :func:`equivalent_n`).

    Returns:
        The bound in nats; 0 at N = 1.

    Example:
        >>> round(bon_kl_bound(4), 6)
        0.636294
    """
    if not n >= 1:
        raise ValueError(f"best-of-N needs n >= 1, got {n}")
    return math.log(n) - (n - 1.0) / n


def bon_distribution(p: torch.Tensor, r: torch.Tensor, n: float) -> torch.Tensor:
    """The exact distribution of the best of N i.i.d. draws from p by reward r.  [M] -> [M]

    arXiv:2404.01730 (BoN section): with F(y) = P_p(r(Y) <= r(y)) and F^-(y) = P_p(r(Y) < r(y)), the winner's
    reward class {y' : r(y') = r(y)} has mass F(y)^N - F^-(y)^N; a tie class's mass is spread over its members
    in proportion to p (the winner among tied draws is one of them at random, and each is a draw of p | class).
    With distinct rewards this is pi_N(y) = F(y)^N - F^-(y)^N.

    Args:
        p: ``[M]`` reference probabilities (>= 0, summing to 1).  r: ``[M]`` rewards (ties allowed).
        n: N >= 1.

    Returns:
        ``pi_N [M]`` float64, summing to 1; 0 wherever p is 0; p itself at N = 1.

    Example:
        >>> bon_distribution(torch.tensor([0.5, 0.5]), torch.tensor([0.0, 1.0]), 2).tolist()
        [0.25, 0.75]
    """
    p, r = _support(p, r)
    if not n >= 1:
        raise ValueError(f"best-of-N needs n >= 1, got {n}")
    _, cls = torch.unique(r, sorted=True, return_inverse=True)  # [M] reward class, ascending
    mass = torch.zeros(int(cls.max()) + 1, dtype=torch.float64).scatter_add(0, cls, p)  # [C]
    below_or_at = torch.cumsum(mass, 0).clamp(max=1.0)  # [C] F
    below = (below_or_at - mass).clamp(min=0.0)  # [C] F^-
    won = below_or_at**n - below**n  # [C] mass of each class under BoN
    share = torch.where(mass > 0, won / mass.clamp(min=torch.finfo(torch.float64).tiny), torch.zeros_like(mass))
    return p * share[cls]


def bon_kl(p: torch.Tensor, r: torch.Tensor, n: float) -> float:
    """KL(pi_N || p) of the exact best-of-N distribution (at most :func:`bon_kl_bound`).

    Args:
        p: ``[M]`` reference probabilities.  r: ``[M]`` rewards.  n: N >= 1.

    Returns:
        The KL in nats.

    Example:
        >>> round(bon_kl(torch.full((2,), 0.5), torch.tensor([0.0, 1.0]), 4), 4)
        0.4594
    """
    pi = bon_distribution(p, r, n)
    return _kl(pi, _support(p, r)[0])


def kl_tilt(p: torch.Tensor, r: torch.Tensor, beta: float) -> tuple[torch.Tensor, float, float]:
    """The KL-RL optimum and its KL and reward: argmax_phi E_phi[r] - beta KL(phi || p).

    arXiv:2404.01730 (KL-constrained RL): phi_beta(y) = p(y) e^{r(y)/beta} / Z_beta, Z_beta = E_p[e^{r/beta}],
    KL(phi_beta || p) = E_phi[r]/beta - log Z_beta. Computed as a log-softmax, so large r/beta is safe.

    Args:
        p: ``[M]`` reference probabilities.  r: ``[M]`` rewards.  beta: the KL coefficient, > 0.

    Returns:
        ``(phi [M] float64, KL(phi || p), E_phi[r])``.

    Example:
        >>> phi, kl, reward = kl_tilt(torch.tensor([0.5, 0.5]), torch.tensor([0.0, 1.0]), 1.0)
        >>> [round(x, 4) for x in phi.tolist()], round(kl, 4), round(reward, 4)
        ([0.2689, 0.7311], 0.1109, 0.7311)
    """
    p, r = _support(p, r)
    if not beta > 0:
        raise ValueError(f"kl_tilt needs beta > 0, got {beta}")
    logits = torch.where(p > 0, p.log() + r / beta, torch.full_like(p, -math.inf))  # [M]
    phi = torch.softmax(logits, 0)  # [M]
    return phi, _kl(phi, p), float((phi * r).sum())


def bon_win_rate(n: float) -> float:
    """P(r(Y_BoN) > r(Y')) for Y' ~ p and continuous r: N/(N + 1) (arXiv:2404.01730).

    The best of N and one more independent draw are N + 1 exchangeable draws; the best of them is among the
    first N with probability N/(N + 1).

    Args:
        n: N >= 1.

    Returns:
        The win rate in [1/2, 1).

    Example:
        >>> bon_win_rate(4)
        0.8
    """
    if not n >= 1:
        raise ValueError(f"best-of-N needs n >= 1, got {n}")
    return n / (n + 1.0)


def equivalent_n(kl: float, tol: float = 1e-12) -> float:
    """The N >= 1 whose bound log N - (N - 1)/N equals ``kl``: the best-of-N a measured KL corresponds to.

    The bound is increasing in N (its derivative is (N - 1)/N^2), so the root is unique; it is found by
    bisection on x = log N in [0, kl + 1] (the bound at e^{kl + 1} exceeds kl). Since the bound is an upper
    bound of the exact best-of-N KL, best-of-N with this N is at most this far from p.

    Args:
        kl: a KL in nats, >= 0.  tol: the bisection's tolerance on log N.

    Returns:
        N as a float (1 at kl = 0).

    Example:
        >>> round(equivalent_n(bon_kl_bound(16)), 9)
        16.0
    """
    if not (kl >= 0 and math.isfinite(kl)):
        raise ValueError(f"equivalent_n needs a finite kl >= 0, got {kl}")
    if kl == 0:
        return 1.0
    lo, hi = 0.0, kl + 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid - 1.0 + math.exp(-mid) < kl:  # the bound at N = e^mid
            lo = mid
        else:
            hi = mid
        if hi - lo <= tol:
            break
    return math.exp(0.5 * (lo + hi))


__all__ = ["bon_distribution", "bon_kl", "bon_kl_bound", "bon_win_rate", "equivalent_n", "kl_tilt"]
