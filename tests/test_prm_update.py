"""PRIME's online PRM update: it learns the outcome labels, it is checkpointed (a resumed run continues the same
PRM exactly), and the final PRM is written."""

from __future__ import annotations

import json
from dataclasses import replace

import torch

from entrolab.batch import TokenBatch
from entrolab.config import base_config
from entrolab.models import load_policy
from entrolab.prm_update import prm_step
from entrolab.rollout import generate
from entrolab.trainer import train
from tests.test_trainer import small_cfg


def test_prm_steps_fit_the_outcome_labels(tiny_dir):
    prm, tok = load_policy(tiny_dir)
    ref, _ = load_policy(tiny_dir)
    rollout = generate(
        prm, tok, ["1+2=", "3+4="], group_size=4, max_new_tokens=8, generator=torch.Generator().manual_seed(0)
    )
    batch = TokenBatch.from_rollout(rollout, 4)
    from entrolab.rollout import teacher_forced

    with torch.no_grad():
        ref_logp, _, _ = teacher_forced(
            ref, batch.prompt_ids, batch.prompt_mask, batch.response_ids, batch.attention_mask
        )
    labels = torch.tensor([1.0, 0.0] * 4)
    opt = torch.optim.AdamW(prm.parameters(), lr=3e-3)
    first = prm_step(prm, opt, batch, ref_logp, labels, beta=0.05)
    assert first["prime/prm_skipped"] == 0.0 and abs(first["prime/prm_loss"] - 0.6931) < 1e-3  # pi_phi = pi_ref
    for _ in range(20):
        last = prm_step(prm, opt, batch, ref_logp, labels, beta=0.05)
    assert last["prime/prm_loss"] < first["prime/prm_loss"] - 0.05 and last["prime/prm_acc"] > 0.5


def test_online_prm_is_checkpointed_and_a_resumed_run_continues_it_exactly(tiny_dir, tmp_path):
    kw = dict(reward_fn="tests.fault_fns:digits", prm_model=str(tiny_dir), prm_lr=1e-3)
    full = small_cfg(tiny_dir, tmp_path / "full", base=base_config("prime"), steps=4, **kw)
    train(full, log=lambda *a: None)
    cut = small_cfg(tiny_dir, tmp_path / "cut", base=base_config("prime"), steps=2, save_every=1, **kw)
    train(cut, log=lambda *a: None)
    train(replace(cut, steps=4), resume=True, log=lambda *a: None)
    a = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()][1:]
    b = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()][1:]
    assert [r["prime/prm_loss"] for r in a] == [r["prime/prm_loss"] for r in b]
    assert a[-1]["prime/prm_loss"] != a[0]["prime/prm_loss"]  # the PRM moved
    assert (tmp_path / "full" / "final_prm" / "config.json").is_file()
