"""Reward-model diagnostics: the STARC distance between two reward functions, and Contrast-Instructions consistency.

Pure functions over tensors (float64 inside); nothing here changes training. Shapes: N scored (prompt, completion)
pairs; a tabular MDP has S states and A actions.

- **STARC** (Skalse, Farnik, Motwani, Jenner, Gleave & Abate, "STARC: A General Framework For Quantifying
  Differences Between Reward Functions", ICLR 2024, arXiv:2309.15257): a pseudometric on reward functions that is
  0 exactly when two rewards induce the same ordering of policies. Standardise each reward, s(R) = c(R) / n(R)
  (s = 0 when n(R) = 0), with c a canonicalisation that removes potential shaping and S'-redistribution and n a
  norm, then measure m(s(R1), s(R2)). Here c is the paper's value-adjusted levelling,

      c_VAL(R)(s, a) = E_{S' ~ tau(s, a)}[R(s, a, S') - V^pi(s) + gamma V^pi(S')] = Q^pi(s, a) - V^pi(s),

  i.e. the advantage function of R under a fixed policy pi; n is the L2 norm over the (s, a) table and
  m(x, y) = scale * ||x - y||_2 with ``scale = 1/2``, so that d lies in [0, 1] and d(R, -R) = 1. Because every
  s(R) has norm 1 (or 0), d = scale * sqrt(2 - 2 cos(c(R1), c(R2))) when neither is 0.
- **The bandit setting entrolab trains in** (a prompt x is the state, a completion y the action, the episode then
  ends): a one-step MDP. Potential shaping gamma Phi(s') - Phi(s) with a terminal s' (Phi(terminal) = 0, or
  gamma = 0) is the per-prompt offset -Phi(x), and S'-redistribution is void (one terminal successor); c_VAL with
  gamma = 0 is R(x, y) - E_{y ~ pi(.|x)} R(x, y): remove each prompt's mean under the sampling policy.
  :func:`starc_distance` estimates it over sampled completions: the group mean of a prompt's samples estimates
  V^pi(x), and the L2 norm over the N samples estimates the norm weighted by the sampling distribution.
- **Contrast Instructions** (Shen, Chen, Song, Jin, Peng, Mi, Khashabi & Yu, "The Trickle-down Impact of Reward
  (In-)consistency on RLHF", arXiv:2309.16155; code shadowkiller33/Contrast-Instruction): two lexically similar
  instructions I1, I2 with their preferred responses R1, R2; a consistent reward model ranks each instruction's
  own response first (response consistency) and each response highest under its own instruction (instruction
  consistency). See :func:`contrast_consistency`.
"""

from __future__ import annotations

import torch

_F64 = torch.float64


def _vector(x: torch.Tensor | float | list[float], name: str) -> torch.Tensor:
    """A finite float64 ``[N]`` tensor from x (a scalar becomes ``[1]``)."""
    t = torch.as_tensor(x, dtype=_F64).detach().reshape(-1)  # [N]
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite")
    return t


def canonicalise_bandit(rewards: torch.Tensor, group_id: torch.Tensor) -> torch.Tensor:
    """c(R)(x, y) = R(x, y) - mean of R over the sampled completions of prompt x (c_VAL with gamma = 0).

    Args:
        rewards: ``[N]`` rewards of N sampled completions.
        group_id: ``[N]`` the prompt of each completion (any ids, any order, groups of any size).

    Returns:
        ``[N]`` float64: each reward minus its prompt's mean (0 for a prompt sampled once).

    >>> canonicalise_bandit(torch.tensor([1.0, 3.0, 5.0]), torch.tensor([7, 7, 2])).tolist()
    [-1.0, 1.0, 0.0]
    """
    r = _vector(rewards, "rewards")  # [N]
    gid = torch.as_tensor(group_id).reshape(-1)
    if gid.shape != r.shape:
        raise ValueError(f"group_id must be [N] = {tuple(r.shape)}, got {tuple(gid.shape)}")
    _, inverse = torch.unique(gid, return_inverse=True)  # [N] group index
    n_groups = int(inverse.max()) + 1 if inverse.numel() else 0
    total = torch.zeros(n_groups, dtype=_F64).index_add_(0, inverse, r)  # [P]
    count = torch.zeros(n_groups, dtype=_F64).index_add_(0, inverse, torch.ones_like(r))  # [P]
    return r - (total / count)[inverse]  # [N]


def _standardise(canon: torch.Tensor, raw: torch.Tensor, eps: float) -> torch.Tensor:
    """s = c / ||c||_2, or 0 when ||c|| <= eps * ||raw|| (c is 0 up to rounding: a shaping-only reward)."""
    norm = torch.linalg.vector_norm(canon)
    if float(norm) <= eps * float(torch.linalg.vector_norm(raw)) or float(norm) == 0.0:
        return torch.zeros_like(canon)
    return canon / norm


def _metric(s1: torch.Tensor, s2: torch.Tensor, scale: float) -> float:
    if not scale > 0:
        raise ValueError(f"starc scale must be > 0, got {scale}")
    return float(scale * torch.linalg.vector_norm(s1 - s2))


def starc_distance(
    r1: torch.Tensor, r2: torch.Tensor, group_id: torch.Tensor, *, scale: float = 0.5, eps: float = 1e-10
) -> float:
    """STARC distance between two reward models scored on the same sampled completions (the bandit setting).

    d = scale * || s(r1) - s(r2) ||_2,  s(r) = c(r) / ||c(r)||_2,  c(r) = r - (its prompt's mean over the samples)

    Args:
        r1, r2: ``[N]`` the two reward models' scores of the same N (prompt, completion) pairs, the completions
            sampled from the policy pi whose value removes shaping.
        group_id: ``[N]`` the prompt of each pair (any ids, order and group sizes).
        scale: the metric's factor (1/2: d in [0, 1], d(R, -R) = 1; the paper's own constant is not recovered).
        eps: ``c`` counts as 0 when ``||c|| <= eps * ||r||`` (the reward is constant within every prompt).

    Returns:
        d as a float: 0 when r2 is a positive multiple of r1 plus any per-prompt offset; 1 (scale 1/2) for r2 = -r1;
        ``scale`` when exactly one of the two is constant within every prompt; 0 when both are.

    Differences from the paper:
        The paper defines STARC on a known tabular MDP; this is its one-step (bandit) case estimated from
        samples: V^pi(x) is the prompt's sample mean (exact in expectation, not per batch), and the norm is the L2
        norm over the sampled pairs, i.e. weighted by how often the policy samples each (x, y) rather than the
        paper's unweighted norm over every (s, a). With every completion of every prompt sampled once under a
        uniform pi it equals :func:`starc_tabular` with gamma = 0 exactly. The factor 1/2 is this module's
        choice (the note's); the paper allows any metric equivalent to a norm and its own scaling constant was
        not confirmed.

    Example:
        >>> r, gid = torch.tensor([1.0, 0.0, 2.0, 5.0]), torch.tensor([0, 0, 1, 1])
        >>> starc_distance(r, 3 * r + torch.tensor([7.0, 7.0, -1.0, -1.0]), gid)
        0.0
        >>> starc_distance(r, -r, gid)
        1.0
    """
    a, b = _vector(r1, "r1"), _vector(r2, "r2")
    if a.shape != b.shape:
        raise ValueError(f"r1 and r2 must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    s1 = _standardise(canonicalise_bandit(a, group_id), a, eps)  # [N]
    s2 = _standardise(canonicalise_bandit(b, group_id), b, eps)  # [N]
    return _metric(s1, s2, scale)


def _tabular_inputs(
    reward: torch.Tensor, tau: torch.Tensor, gamma: float, pi: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    tau = torch.as_tensor(tau, dtype=_F64)
    if tau.dim() != 3 or tau.shape[0] != tau.shape[2]:
        raise ValueError(f"tau must be [S, A, S], got {tuple(tau.shape)}")
    n_states, n_actions = tau.shape[0], tau.shape[1]
    if bool((tau < 0).any()) or not torch.allclose(tau.sum(-1), torch.ones((), dtype=_F64)):
        raise ValueError("tau[s, a] must be a probability distribution over next states")
    tau = tau / tau.sum(-1, keepdim=True)  # exact rows in float64 (a float32 softmax sums to 1 only to ~1e-7)
    reward = torch.as_tensor(reward, dtype=_F64)
    if reward.shape == (n_states, n_actions):
        reward = reward.unsqueeze(-1).expand(n_states, n_actions, n_states)  # R(s, a) -> R(s, a, s')
    if reward.shape != tau.shape:
        raise ValueError(f"R must be [S, A, S] or [S, A] = {(n_states, n_actions)}, got {tuple(reward.shape)}")
    pi = (
        torch.full((n_states, n_actions), 1.0 / n_actions, dtype=_F64)
        if pi is None
        else torch.as_tensor(pi, dtype=_F64)
    )
    if (
        pi.shape != (n_states, n_actions)
        or bool((pi < 0).any())
        or not torch.allclose(pi.sum(-1), torch.ones((), dtype=_F64))
    ):
        raise ValueError(f"pi must be [S, A] = {(n_states, n_actions)} with rows that are distributions")
    pi = pi / pi.sum(-1, keepdim=True)
    if not 0.0 <= gamma < 1.0:
        raise ValueError(f"gamma must be in [0, 1), got {gamma}")
    return reward, tau, pi


def value_function(
    reward: torch.Tensor, tau: torch.Tensor, gamma: float, pi: torch.Tensor | None = None
) -> torch.Tensor:
    """V^pi of a tabular MDP: the solution of V = r_pi + gamma P_pi V.

    Args:
        reward: ``[S, A, S]`` R(s, a, s') (or ``[S, A]``).  tau: ``[S, A, S]`` transition probabilities.
        gamma: discount in [0, 1).  pi: ``[S, A]`` the policy (None: uniform).

    Returns:
        ``[S]`` float64.

    >>> tau = torch.ones(2, 1, 2) / 2
    >>> value_function(torch.ones(2, 1), tau, 0.5).tolist()
    [2.0, 2.0]
    """
    reward, tau, pi = _tabular_inputs(reward, tau, gamma, pi)
    r_pi = (pi * (tau * reward).sum(-1)).sum(-1)  # [S] expected one-step reward under pi
    p_pi = torch.einsum("sa,sat->st", pi, tau)  # [S, S]
    eye = torch.eye(tau.shape[0], dtype=_F64)
    return torch.linalg.solve(eye - gamma * p_pi, r_pi)  # [S]


def canonicalise_val(
    reward: torch.Tensor, tau: torch.Tensor, gamma: float, pi: torch.Tensor | None = None
) -> torch.Tensor:
    """The paper's value-adjusted levelling c_VAL(R)(s, a) = E_{S'}[R(s, a, S') - V^pi(s) + gamma V^pi(S')].

    Equal to Q^pi(s, a) - V^pi(s); it does not depend on s' (which removes S'-redistribution), and
    c_VAL(R + gamma Phi(s') - Phi(s)) = c_VAL(R) for any potential Phi.

    Args:
        reward, tau, gamma, pi: as in :func:`value_function`.

    Returns:
        ``[S, A]`` float64.

    >>> tau = torch.ones(2, 2, 2) / 2
    >>> canonicalise_val(torch.full((2, 2), 3.0), tau, 0.9).abs().max().item() < 1e-12  # a constant is shaping
    True
    """
    reward, tau, pi = _tabular_inputs(reward, tau, gamma, pi)
    v = value_function(reward, tau, gamma, pi)  # [S]
    return (tau * (reward + gamma * v.view(1, 1, -1))).sum(-1) - v.unsqueeze(-1)  # [S, A]


def starc_tabular(
    r1: torch.Tensor,
    r2: torch.Tensor,
    tau: torch.Tensor,
    gamma: float,
    pi: torch.Tensor | None = None,
    *,
    scale: float = 0.5,
    eps: float = 1e-10,
) -> float:
    """STARC distance of two rewards of a tabular MDP: c_VAL, the L2 norm over (s, a), ``scale`` * L2 metric.

    Args:
        r1, r2: ``[S, A, S]`` (or ``[S, A]``) reward tables.  tau: ``[S, A, S]`` transitions.
        gamma: discount in [0, 1).  pi: ``[S, A]`` the policy of c_VAL (None: uniform, the common default).
        scale: the metric's factor (1/2: d in [0, 1]).  eps: c counts as 0 when ``||c|| <= eps * ||R||``.

    Returns:
        d as a float.

    Differences from the paper:
        c_VAL, the L2 norm and the L2 metric are the paper's STARC choices for a tabular MDP (its canonicalisation
        is linear and removes potential shaping and S'-redistribution); the norm is over the ``[S, A]`` table of
        c_VAL (which does not depend on s', so an ``[S, A, S]`` norm differs by a constant that cancels). The
        minimal (projection) canonicalisation and EPIC/DARD are not here; the factor 1/2 is not confirmed from
        the paper. A zero canonical reward (||c|| <= eps ||R||) standardises to 0, as the paper's s(R) = 0.

    Example:
        >>> g, f64 = torch.Generator().manual_seed(0), torch.float64
        >>> tau = torch.softmax(torch.randn(4, 2, 4, generator=g, dtype=f64), -1)
        >>> r, phi = torch.randn(4, 2, 4, generator=g, dtype=f64), torch.randn(4, generator=g, dtype=f64)
        >>> shaped = 3 * r + 0.9 * phi.view(1, 1, 4) - phi.view(4, 1, 1)
        >>> starc_tabular(r, shaped, tau, 0.9) < 1e-12, round(starc_tabular(r, -r, tau, 0.9), 12)
        (True, 1.0)
    """
    c1 = canonicalise_val(r1, tau, gamma, pi)  # [S, A]
    c2 = canonicalise_val(r2, tau, gamma, pi)  # [S, A]
    s1 = _standardise(c1, torch.as_tensor(r1, dtype=_F64), eps)
    s2 = _standardise(c2, torch.as_tensor(r2, dtype=_F64), eps)
    return _metric(s1, s2, scale)


def contrast_consistency(
    s11: torch.Tensor, s12: torch.Tensor, s22: torch.Tensor, s21: torch.Tensor
) -> dict[str, float]:
    """Contrast-Instructions consistency of a reward model: fractions of N examples ranked consistently.

    With s_ij = r(I_i, R_j), the score of instruction i followed by the preferred response of instruction j:

        response consistency:     s11 > s12  and  s22 > s21    (each instruction prefers its own response)
        instruction consistency:  s11 > s21  and  s22 > s12    (each response scores highest under its own instruction)
        one-way (released code):  s11 > s21                    (``code/inference.py``: r(q, y_q) > r(q', y_q))

    Comparisons are strict (a tie is inconsistent), as in the released code. Every fraction is unchanged by a
    positive affine map a s + b (a > 0) applied to all four scores.

    Args:
        s11, s12, s22, s21: ``[N]`` scores (or floats) of the N contrast pairs.

    Returns:
        ``{"response", "instruction", "instruction_one_way"}`` fractions in [0, 1].

    Differences from the paper / released code:
        The released ``code/inference.py`` reports ``instruction_one_way`` (one direction, strict ``>``);
        whether the paper's headline number needs both directions per example is not recovered, so both are
        returned (the both-direction rates by default in the keys without a suffix). Retrieval of contrast
        pairs (embedding similarity), ConvexDA and RewardFusion are not here.

    Example:
        >>> out = contrast_consistency(2.0, 1.0, 0.5, 0.7)
        >>> out["response"], out["instruction"], out["instruction_one_way"]
        (0.0, 0.0, 1.0)
    """
    a, b, c, d = (_vector(x, name) for x, name in ((s11, "s11"), (s12, "s12"), (s22, "s22"), (s21, "s21")))
    if not a.shape == b.shape == c.shape == d.shape or a.numel() == 0:
        raise ValueError(
            f"s11, s12, s22, s21 must be the same non-empty [N], got {[tuple(t.shape) for t in (a, b, c, d)]}"
        )
    return {
        "response": float(((a > b) & (c > d)).to(_F64).mean()),
        "instruction": float(((a > d) & (c > b)).to(_F64).mean()),
        "instruction_one_way": float((a > d).to(_F64).mean()),
    }


__all__ = [
    "canonicalise_bandit",
    "canonicalise_val",
    "contrast_consistency",
    "starc_distance",
    "starc_tabular",
    "value_function",
]
