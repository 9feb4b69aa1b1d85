"""AEPO's dynamic entropy-balanced rollout: split each prompt's budget between global samples and branches.

Per prompt with budget k (the group size), as AEPO's released rollout does (``AEPO/verl_aepo_entropy``; the
pieces are ``entrolab.methods.aepo_rollout``):

1. *entropy pre-monitoring*: one probe episode per prompt (sampled, not trained, as the code's extra
   trajectory) gives H_root, the entropy of its first turn's first tokens, and H_tool, the mean entropy of its
   turns after a tool result; m = k sigmoid(beta (H_root - H_tool)) episodes are sampled from the prompt;
2. *branching*: after each tool result of the last round's episodes, a turn whose entropy rose over its
   path's first turn (dH) is a candidate; ``choose_branches`` forks new episodes there (the prefix copied,
   the environment replayed) with probability (alpha + gamma dH)(1 - Pen(l)), l the prompt's consecutive
   branching rounds; rounds repeat until the budget is spent or no fork is made;
3. any budget left is filled with fresh episodes.

Every episode of the group (global, branched, refilled) is a row of the batch; a branch's shared prefix is
trained in every row that holds it (as ARPO/AEPO train the tree's paths).
"""

from __future__ import annotations

import torch

from entrolab.agent_rollout import AgentRollout, Runner, _Episode
from entrolab.methods.aepo_rollout import (
    AEPORolloutConfig,
    choose_branches,
    global_budgets,
    next_consecutive,
    step_entropy,
    tool_entropy_mean,
)


def _turn_entropies(ep: _Episode, cfg: AEPORolloutConfig, vocab: int) -> list[float]:
    """The step entropy of each turn of ``ep`` (its first ``entropy_window`` tokens; sum / log V)."""
    out = []
    for t, start in enumerate(ep.starts):
        stop = start + sum(1 for s in ep.step[start:] if s == t)
        h = torch.tensor([ep.entropy[start:stop]], dtype=torch.float64)
        out.append(float(step_entropy(h, torch.ones_like(h), cfg, vocab_size=vocab)[0]) if stop > start else 0.0)
    return out


def aepo_rollout(runner: Runner, examples, group_size: int, cfg: AEPORolloutConfig, seed: int) -> AgentRollout:
    """``group_size`` episodes per example, split between global samples and branches; metrics
    ``aepo/global_frac``, ``aepo/branch_frac``, ``aepo/refill_frac``, ``aepo/branch_rounds``, ``aepo/h_root``,
    ``aepo/h_tool`` added to the rollout's."""
    vocab, k, gen = len(runner.tok), group_size, runner.sampling["generator"]
    seeds = [seed * 1_000_003 + i * (group_size + 1) for i in range(len(examples))]
    probes = [runner.start(e, seeds[i]) for i, e in enumerate(examples)]
    runner.run(probes)
    h = [_turn_entropies(p, cfg, vocab) for p in probes]
    width = max(len(x) for x in h)
    turns = torch.tensor([x + [0.0] * (width - len(x)) for x in h], dtype=torch.float64)  # [P, K]
    after_tool = torch.tensor(
        [[0 < t <= len(p.records) and p.records[t - 1]["tool_call"] for t in range(width)] for p in probes]
    )
    valid = torch.tensor([[t < len(x) for t in range(width)] for x in h]) & (after_tool | (cfg.tool_turns == "all"))
    h_root, h_tool = turns[:, 0], tool_entropy_mean(turns, valid | (torch.arange(width) == 0), cfg)
    m = global_budgets(k, h_root, h_tool, cfg).tolist()  # [P]
    groups = [[runner.start(e, seeds[i] + 1 + j) for j in range(m[i])] for i, e in enumerate(examples)]
    runner.run([ep for g in groups for ep in g])
    consecutive = torch.zeros(len(examples), dtype=torch.long)
    last = [list(g) for g in groups]
    branched = [0] * len(examples)
    rounds = 0
    while any(len(g) < k for g in groups) and any(last):
        forks, made = [], torch.zeros(len(examples), dtype=torch.bool)
        for p, eps in enumerate(last):
            remaining = k - len(groups[p])
            cands = []
            for idx, ep in enumerate(eps):
                ent = _turn_entropies(ep, cfg, vocab)  # turn 0 is the path's root turn (a branch copies it)
                for t in range(ep.fork_turn + 1, len(ep.records)):  # the turns it sampled itself, after a tool
                    if ep.records[t - 1]["tool_call"]:
                        cands.append((idx, t, ent[t] - ent[0], int(consecutive[p])))
            chosen = choose_branches(cands, remaining, gen, cfg) if remaining > 0 else []
            new = [runner.branch(eps[idx], t) for idx, t in chosen]
            groups[p] += new
            branched[p] += len(new)
            made[p] = bool(new)
            forks.append(new)
        if not bool(made.any()):
            break
        rounds += 1
        runner.run([ep for f in forks for ep in f])
        consecutive = next_consecutive(consecutive, made)
        last = forks
    refills = 0
    for p, e in enumerate(examples):  # any budget left: fresh episodes
        extra = [runner.start(e, seeds[p] + 1 + k + j) for j in range(k - len(groups[p]))]
        refills += len(extra)
        groups[p] += extra
    runner.run([ep for g in groups for ep in g])
    ar = runner.assemble([ep for g in groups for ep in g])
    total = float(k * len(examples))
    tool_mean = h_tool[~torch.isnan(h_tool)]
    ar.metrics.update(
        {
            "aepo/global_frac": sum(m) / total,
            "aepo/branch_frac": sum(branched) / total,
            "aepo/refill_frac": refills / total,
            "aepo/branch_rounds": float(rounds),
            "aepo/h_root": float(h_root.mean()),
        }
    )
    if tool_mean.numel():  # no probe made a tool call: no H_tool (the budget split used a zero gap)
        ar.metrics["aepo/h_tool"] = float(tool_mean.mean())
    return ar


__all__ = ["aepo_rollout"]
