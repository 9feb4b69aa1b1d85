"""``entrolab rm train``: fit a reward model on preference pairs and write it with its held-out accuracy.

See :mod:`entrolab.reward_model` for the model, the pairs and the spurious feature. The pairs are shuffled with
the seed, the first ``eval_fraction`` held out; the spurious feature is injected into the chosen side of the
training *and* held-out pairs (``spurious_rate`` of them), and the accuracy is also reported on the held-out pairs
without it (``accuracy_clean``) and with the feature moved to the rejected side (``accuracy_flipped``: how much
the model reads the feature instead of the answer), and its Contrast-Instructions consistency on held-out
prompts (``contrast``: does each prompt prefer its own right answer, and each answer its own prompt).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from entrolab.pairs import read_pairs, verifier_pairs
from entrolab.reward_model import (
    META,
    RMConfig,
    bt_loss,
    build_rm,
    inject,
    pairwise_accuracy,
    scores,
)


def _with_feature(pairs: list[dict[str, str]], cfg: RMConfig, side: str, rng: random.Random) -> list[dict[str, str]]:
    out = []
    for p in pairs:
        q = dict(p)
        if cfg.spurious != "none" and rng.random() < cfg.spurious_rate:
            q[side] = inject(q[side], cfg.spurious, cfg.marker, cfg.length_pad)
        out.append(q)
    return out


def contrast(model, tok, pairs: list[dict[str, str]]) -> dict[str, float] | None:
    """Contrast-Instructions consistency (arXiv:2309.16155) on consecutive held-out pairs of different prompts:
    instruction i with the preferred response of instruction j (s_ij), for (i, j) = (1, 1), (1, 2), (2, 2), (2, 1)."""
    from entrolab.rm_diagnostics import contrast_consistency

    two = [(a, b) for a, b in zip(pairs[::2], pairs[1::2], strict=False) if a["prompt"] != b["prompt"]]
    if not two:
        return None
    with torch.no_grad():

        def s(pi: int, ri: int) -> torch.Tensor:
            return scores(model, tok, [p[pi]["prompt"] for p in two], [p[ri]["chosen"] for p in two]).mean(-1)

        return contrast_consistency(s(0, 0), s(0, 1), s(1, 1), s(1, 0))


def train_rm(cfg: RMConfig, task: Any = None, log=print) -> dict[str, Any]:
    """Train and save the reward model -> the summary written to ``out/entrolab_rm.json``."""
    from entrolab.data import build_task

    if task is None and cfg.pairs is None:
        task = build_task(cfg.task, cfg.seed)
    pairs = read_pairs(cfg.pairs) if cfg.pairs else verifier_pairs(task, cfg.n_pairs, cfg.seed)
    rng = random.Random(cfg.seed)
    rng.shuffle(pairs)
    n_eval = max(1, int(len(pairs) * cfg.eval_fraction))
    if len(pairs) - n_eval < 1:
        raise ValueError(f"{len(pairs)} pairs leave none to train on after holding out {n_eval}")
    held, train = pairs[:n_eval], pairs[n_eval:]
    train = _with_feature(train, cfg, "chosen", rng)
    held_feature = _with_feature(held, cfg, "chosen", random.Random(cfg.seed + 1))
    model, tok = build_rm(cfg)
    torch.manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    model.train()
    t0, losses = time.perf_counter(), []
    order = random.Random(cfg.seed + 2)
    for step in range(1, cfg.steps + 1):
        batch = order.sample(train, min(cfg.batch_size, len(train)))
        prompts = [p["prompt"] for p in batch]
        loss = bt_loss(
            scores(model, tok, prompts, [p["chosen"] for p in batch], len(batch)),
            scores(model, tok, prompts, [p["rejected"] for p in batch], len(batch)),
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if step % 50 == 0 or step == cfg.steps:
            log(f"step {step}/{cfg.steps}: loss {sum(losses[-50:]) / len(losses[-50:]):.4f}")
    model.eval()
    summary = {
        "config": asdict(cfg),
        "pairs": {"train": len(train), "held_out": len(held)},
        "accuracy": pairwise_accuracy(model, tok, held_feature),
        "accuracy_clean": pairwise_accuracy(model, tok, held),
        "accuracy_flipped": pairwise_accuracy(
            model, tok, _with_feature(held, replace(cfg, spurious_rate=1.0), "rejected", random.Random(0))
        )
        if cfg.spurious != "none"
        else None,
        "contrast": contrast(model, tok, held),
        "final_loss": sum(losses[-50:]) / len(losses[-50:]),
        "train_s": time.perf_counter() - t0,
    }
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    import transformers

    transformers.logging.disable_progress_bar()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / META).write_text(json.dumps(summary, indent=2))
    return summary


__all__ = ["train_rm"]
