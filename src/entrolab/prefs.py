"""Offline preference optimisation: train a policy on (prompt, chosen, rejected) pairs with a ``preference_loss``.

The policy and a frozen reference copy are loaded from one local HF folder; each step scores a batch of pairs
teacher-forced (sequence log-probs: sums over the response tokens, EOS included), applies the loss (DPO by
default, or POWER-DL with its per-pair dynamic-label buffer), averages it over the pairs and takes one AdamW
step. Held-out pairwise accuracy is measured before and after. The run folder gets ``final/`` (a HF model
folder), ``metrics.jsonl`` (one line per step), ``summary.json`` and, with dynamic labels, ``labels.json``.

``task_pairs`` builds pairs from a task's own demonstrations (a right one chosen over a wrong or badly
formatted one), so a user without preference data can run it.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any

import torch

from entrolab import catalogue
from entrolab.jsonio import append_jsonl, write_json_atomic
from entrolab.methods.preference import dynamic_labels, power_margin
from entrolab.models import ModelLoadError, load_policy, save_policy
from entrolab.pairs import FIELDS, read_pairs, task_pairs, write_pairs  # noqa: F401  (task_pairs, write_pairs: API)
from entrolab.rollout import teacher_forced

MAX_GRAD_NORM = 1.0  # gradient-norm clip of every step
# `entrolab prefs --preset NAME`: a paper's loss and its options
PREFS_PRESETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "dpo": ("dpo", ("dpo.beta=0.1",)),  # Rafailov et al. (arXiv:2305.18290), TRL's default beta
    "power_dl": ("power_dl", ()),  # Rashidinejad & Tian (arXiv:2412.09544), reconstructed: see its docstring
}


@dataclass(frozen=True)
class PrefsConfig:
    """An offline preference-optimisation run."""

    model: str
    """A local Hugging Face causal-LM folder: the initial policy and the frozen reference."""
    pairs: str
    """A JSONL file, one {"prompt", "chosen", "rejected"} object (strings) per line."""
    out: str
    """The run folder (final/, metrics.jsonl, summary.json, labels.json)."""
    loss: str = "dpo"
    """The ``preference_loss``: dpo, power_dl, or 'package.module:function'."""
    options: tuple[str, ...] = ()
    """Options of the loss as 'method.field=value', e.g. 'dpo.beta=0.3'."""
    steps: int = 50
    """Optimizer steps."""
    batch_size: int = 8
    """Pairs per step (at most the number of training pairs)."""
    lr: float = 1e-4
    """AdamW learning rate (constant)."""
    seed: int = 0
    """Seed of the train/eval split and the batch order."""
    eval_fraction: float = 0.1
    """Fraction of the pairs held out for the pairwise accuracy (at least one pair when > 0)."""
    dl_gamma: float = 0.1
    """power_dl: step of the dynamic labels l <- (1 - gamma) l + gamma sigma(margin) each time a pair is seen
    (0: fixed labels, plain POWER; not recovered from the paper)."""
    device: str = "cpu"
    """Where the policy and the reference run."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if not 0.0 <= self.dl_gamma <= 1.0:
            raise ValueError(f"dl_gamma must be in [0, 1], got {self.dl_gamma}")
        entry, _ = preference_loss(self)  # an unknown loss, option or value fails here
        extra = sorted(set(entry.needs) - {"labels"})
        if extra:
            raise ValueError(f"preference_loss {self.loss!r} needs {extra}; train_prefs supplies only ['labels']")


def preference_loss(cfg: PrefsConfig):
    """(entry, config) of the configured ``preference_loss``."""
    from entrolab.config import parse_method_options

    opts = parse_method_options([("preference_loss", cfg.loss)], cfg.options)
    entry = catalogue.get("preference_loss", cfg.loss)
    return entry, entry.make_config(opts.get(cfg.loss))


def _encode(tokenizer, pairs: list[dict[str, str]]) -> list[tuple[list[int], list[int], list[int]]]:
    """(prompt ids, chosen ids + EOS, rejected ids + EOS) per pair, tokenised as ``entrolab.pretrain`` does."""

    def response(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]

    return [(tokenizer(p["prompt"])["input_ids"], response(p["chosen"]), response(p["rejected"])) for p in pairs]


def _batch(rows, idx: list[int], pad_id: int, device: str) -> tuple[torch.Tensor, ...]:
    """The 2n sequences (chosen rows, then rejected rows): prompts left-padded, responses right-padded."""
    prompts = [rows[i][0] for i in idx] * 2
    responses = [rows[i][1] for i in idx] + [rows[i][2] for i in idx]
    tp, t = max(map(len, prompts)), max(map(len, responses))
    prompt_ids, prompt_mask = torch.full((len(prompts), tp), pad_id), torch.zeros(len(prompts), tp, dtype=torch.long)
    response_ids, response_mask = torch.full((len(prompts), t), pad_id), torch.zeros(len(prompts), t)
    for k, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        prompt_ids[k, tp - len(p) :], prompt_mask[k, tp - len(p) :] = torch.tensor(p), 1
        response_ids[k, : len(r)], response_mask[k, : len(r)] = torch.tensor(r), 1.0
    return tuple(x.to(device) for x in (prompt_ids, prompt_mask, response_ids, response_mask))


def _scores(model, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(chosen log-prob [n], rejected log-prob [n], chosen lengths [n], rejected lengths [n]) of a batch."""
    logp, _, _ = teacher_forced(model, *batch)  # [2n, T]
    mask = batch[3]  # [2n, T]
    seq = (logp.float() * mask).sum(-1)  # [2n]
    lengths = mask.sum(-1).long()  # [2n]
    return (*seq.chunk(2), *lengths.chunk(2))


def _loss(entry, mcfg, policy, ref, batch, idx: list[int], ref_cache: dict, labels: torch.Tensor | None):
    """(per-pair loss [n], metrics, scores) of one batch; the reference's scores of each pair are computed once
    (on the first batch that holds it) and kept in ``ref_cache``: pair index -> (chosen, rejected) log-prob."""
    chosen, rejected, chosen_len, rejected_len = _scores(policy, batch)
    if any(i not in ref_cache for i in idx):
        with torch.no_grad():
            ref_c, ref_r, _, _ = _scores(ref, batch)
        ref_cache.update({i: (c, r) for i, c, r in zip(idx, ref_c, ref_r, strict=True)})
    ref_chosen = torch.stack([ref_cache[i][0] for i in idx])  # [n]
    ref_rejected = torch.stack([ref_cache[i][1] for i in idx])  # [n]
    scores = (chosen, rejected, ref_chosen, ref_rejected, chosen_len, rejected_len)
    kwargs = {"cfg": mcfg, "chosen_lengths": chosen_len, "rejected_lengths": rejected_len}
    if "labels" in entry.needs:
        kwargs["labels"] = labels
    loss, metrics = entry.fn(chosen, rejected, ref_chosen, ref_rejected, **kwargs)
    return loss, metrics, scores


@torch.no_grad()
def _evaluate(entry, mcfg, policy, ref, rows, idx: list[int], batch_size: int, pad_id: int, device: str, cache) -> dict:
    """Held-out pairwise accuracy: the loss's implicit-reward margin > 0 (``pref/accuracy``; ties count as wrong),
    its mean margin, and ``logp_accuracy``: the policy's per-token mean log-prob higher on the chosen response."""
    if not idx:
        return {}
    was_training = policy.training
    policy.eval()
    sums: dict[str, float] = {}
    for start in range(0, len(idx), batch_size):
        part = idx[start : start + batch_size]
        ones = torch.ones(len(part), device=device)
        batch = _batch(rows, part, pad_id, device)
        _, metrics, (c, r, _, _, lc, lr) = _loss(entry, mcfg, policy, ref, batch, part, cache, ones)
        values = {"logp_accuracy": ((c / lc) > (r / lr)).float().mean()}
        values |= {k.removeprefix("pref/"): v for k, v in metrics.items() if k in ("pref/accuracy", "pref/margin_mean")}
        for k, v in values.items():
            sums[k] = sums.get(k, 0.0) + float(v) * len(part)
    policy.train(was_training)
    return {"pairs": len(idx), **{k: v / len(idx) for k, v in sums.items()}}


def _check_model(path: str) -> None:
    if not (Path(path) / "config.json").is_file():
        raise ModelLoadError(f"model path {path!r} is not a Hugging Face model folder (no config.json there)")


def train_prefs(cfg: PrefsConfig) -> dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.pairs`` with ``cfg.loss``; writes the run folder and returns the summary."""
    pairs = read_pairs(cfg.pairs)
    n_eval = max(1, round(cfg.eval_fraction * len(pairs))) if cfg.eval_fraction > 0 else 0
    if n_eval >= len(pairs):
        raise ValueError(f"{len(pairs)} pair(s) leave none to train on after {n_eval} held out; add pairs")
    _check_model(cfg.model)
    entry, mcfg = preference_loss(cfg)
    dynamic = entry.name == "power_dl" and cfg.dl_gamma > 0
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.jsonl").unlink(missing_ok=True)

    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    policy, tokenizer = load_policy(cfg.model, device=cfg.device)
    ref, _ = load_policy(cfg.model, device=cfg.device)
    ref.eval().requires_grad_(False)
    policy.train()
    rows, pad = _encode(tokenizer, pairs), tokenizer.pad_token_id
    order = list(range(len(pairs)))
    rng = random.Random(cfg.seed)
    rng.shuffle(order)
    eval_idx, train_idx = sorted(order[:n_eval]), order[n_eval:]
    labels = torch.ones(len(pairs), device=cfg.device)  # the per-pair soft labels (dynamic with power_dl)
    batch_size = min(cfg.batch_size, len(train_idx))
    ref_cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def evaluate() -> dict:
        return _evaluate(entry, mcfg, policy, ref, rows, eval_idx, cfg.batch_size, pad, cfg.device, ref_cache)

    before = evaluate()
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=0.0)
    stream: list[int] = []
    losses = []
    for step in range(1, cfg.steps + 1):
        while len(stream) < batch_size:  # epochs of the shuffled train pairs
            stream += rng.sample(train_idx, len(train_idx))
        idx, stream = stream[:batch_size], stream[batch_size:]
        batch = _batch(rows, idx, pad, cfg.device)
        loss, metrics, scores = _loss(entry, mcfg, policy, ref, batch, idx, ref_cache, labels[idx])
        total = loss.mean()
        opt.zero_grad(set_to_none=True)
        total.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), MAX_GRAD_NORM)
        opt.step()
        if dynamic:
            margin, *_ = power_margin(*(s.detach() for s in scores), mcfg)
            labels[idx] = dynamic_labels(labels[idx], margin, cfg.dl_gamma)
        losses.append(total.item())
        row = {"step": step, "loss/total": losses[-1], "grad_norm": float(grad_norm)}
        append_jsonl(out / "metrics.jsonl", row | {k: float(v) for k, v in metrics.items()})
    after = evaluate()
    save_policy(policy, tokenizer, out / "final")

    label_info = None
    if dynamic:
        held_out = set(eval_idx)
        saved = [None if i in held_out else round(float(labels[i]), 6) for i in range(len(pairs))]
        write_json_atomic(out / "labels.json", {"gamma": cfg.dl_gamma, "labels": saved})
        trained = labels[train_idx]
        label_info = {"gamma": cfg.dl_gamma, "mean": float(trained.mean()), "min": float(trained.min())}
    summary = {
        "config": asdict(cfg),
        "loss": entry.name,
        "loss_config": asdict(mcfg) if is_dataclass(mcfg) else None,
        "pairs": {"train": len(train_idx), "eval": len(eval_idx)},
        "eval_before": before,
        "eval_after": after,
        "final_loss": sum(losses[-10:]) / len(losses[-10:]),
        "loss_curve": losses,
        "dynamic_labels": label_info,
        "seconds": time.perf_counter() - t0,
    }
    write_json_atomic(out / "summary.json", summary)
    return summary


__all__ = ["PrefsConfig", "preference_loss", "read_pairs", "task_pairs", "train_prefs", "write_pairs"]
