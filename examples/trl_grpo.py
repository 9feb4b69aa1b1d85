"""GRPO in TRL with an entrolab method chosen by name: ``EntrolabGRPOTrainer`` on entrolab's arithmetic task.

    # one process (CPU or one GPU)
    python examples/trl_grpo.py --methods clip_cov --steps 20
    # N processes (N GPUs; on a machine without GPUs, N CPU processes over gloo)
    accelerate launch --multi_gpu --num_processes 2 examples/trl_grpo.py --methods forking_tokens --steps 20
    # your own model folder and a method mapping (JSON)
    python examples/trl_grpo.py --model /models/Qwen2.5-0.5B-Instruct --bf16 \\
        --methods '{"policy_loss": "steer", "token_filters": ["forking_tokens"], "options": ["steer.weight_max=1.2"]}'

Without ``--model`` a tiny Llama is built locally (nothing is downloaded) so that the script runs anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import torch
from datasets import Dataset
from trl import GRPOConfig

from entrolab.integrations.trl import EntrolabGRPOTrainer
from entrolab.models import build_tiny_model, build_tokenizer, load_policy, save_policy
from entrolab.tasks import make_task


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="local HF causal-LM folder (default: a tiny model built here)")
    p.add_argument("--methods", default="clip_cov", help="a preset name or a JSON mapping of axis names")
    p.add_argument("--loss-type", default="dapo", help="TRL loss_type: sets the aggregation (grpo, dr_grpo, ...)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out", default="runs/trl_grpo")
    p.add_argument("--bf16", action="store_true", help="bf16 training (GPUs)")
    args = p.parse_args()
    methods = json.loads(args.methods) if args.methods.lstrip().startswith("{") else args.methods

    model_dir = args.model
    if model_dir is None:  # every process builds the same tiny model (fixed seed), so they all start equal
        model_dir = os.path.join(tempfile.gettempdir(), f"entrolab-tiny-{os.environ.get('LOCAL_RANK', '0')}")
        tok = build_tokenizer()
        save_policy(build_tiny_model(tok, "tiny1m", seed=0), tok, model_dir)
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    model, tokenizer = load_policy(model_dir, dtype=dtype)
    tokenizer.padding_side = "left"

    task = make_task("arithmetic", seed=0)
    examples = list(task.train[:512])
    dataset = Dataset.from_list([{"prompt": task.prompt(e), "idx": i} for i, e in enumerate(examples)])

    def verifier(prompts, completions, idx, **kw) -> list[float]:
        """entrolab's verifier as a TRL reward function: 1 right, 0 wrong or badly formatted."""
        return [float(task.verify(c, examples[i]).score) for c, i in zip(completions, idx, strict=True)]

    config = GRPOConfig(
        output_dir=args.out,
        max_steps=args.steps,
        per_device_train_batch_size=16,
        num_generations=8,
        max_completion_length=32,
        loss_type=args.loss_type,
        learning_rate=1e-4,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        bf16=args.bf16,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True,
        seed=0,
    )
    trainer = EntrolabGRPOTrainer(
        model=model,
        processing_class=tokenizer,
        reward_funcs=verifier,
        args=config,
        train_dataset=dataset,
        methods=methods,
    )
    if trainer.accelerator.is_main_process:
        print("entrolab methods:", trainer.entrolab_methods.describe())
    trainer.train()
    if trainer.accelerator.is_main_process:
        last = [row for row in trainer.state.log_history if "loss" in row][-1]
        keys = [k for k in last if "/" in k and not k.startswith(("completions/", "rewards/"))]
        print({k: round(float(last[k]), 4) for k in sorted(keys)})


if __name__ == "__main__":
    main()
