"""Run by ``tests/test_integration_trl.py`` under ``accelerate launch --multi_gpu --num_processes 2`` (CPU, gloo):
one EntrolabGRPOTrainer step with a batch-wide filter (forking_tokens) and a batch-scope covariance top-k
(kl_cov, scope batch); each rank saves its rows' tensors to ``$ENTROLAB_OUT/rank{r}.pt``."""

from __future__ import annotations

import os

import torch
import transformers
from datasets import Dataset
from trl import GRPOConfig

from entrolab.integrations.trl import EntrolabGRPOTrainer
from entrolab.models import load_policy


def ones_reward(completions, **kw) -> list[float]:
    return [float(c.count("1")) for c in completions]


def main() -> None:
    transformers.logging.set_verbosity_error()
    torch.set_num_threads(1)
    out = os.environ["ENTROLAB_OUT"]
    model, tok = load_policy(os.environ["ENTROLAB_TINY"])
    tok.padding_side = "left"
    methods = {
        "policy_loss": "kl_cov",
        "token_filters": ["forking_tokens"],
        "options": ["kl_cov.scope='batch'", "kl_cov.ratio=0.05", "forking_tokens.rho=0.3"],
    }
    args = GRPOConfig(
        output_dir=os.path.join(out, "run"),
        max_steps=1,
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=12,
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        bf16=False,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
        learning_rate=1e-3,
    )
    ds = Dataset.from_list([{"prompt": f"{i} + {i} ="} for i in range(64)])
    tr = EntrolabGRPOTrainer(
        model=model, processing_class=tok, reward_funcs=ones_reward, args=args, train_dataset=ds, methods=methods
    )
    tr.train()
    gen = tr._generation["train"]
    b = gen.batch
    rank = tr.accelerator.process_index
    torch.save(
        {
            "world": tr.accelerator.num_processes,
            "spec": tr.entrolab_methods.describe(),
            "attention_mask": b.attention_mask,
            "loss_mask": b.loss_mask,
            "old_logp": b.old_logp,
            "old_entropy": b.old_entropy,
            "truncated": b.truncated,
            "advantages": b.advantages,
            "selected": gen.stats["kl_cov"]["selected"],
            "params": torch.cat([p.detach().flatten() for p in tr.model.parameters()]),
        },
        os.path.join(out, f"rank{rank}.pt"),
    )


if __name__ == "__main__":
    main()
