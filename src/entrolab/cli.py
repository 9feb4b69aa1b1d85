"""The ``entrolab`` command: pretrain, eval, train, demo, methods.

Each sub-command's flags come from a typed dataclass (field docstrings are the ``--help`` text).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Literal

from tyro.conf import arg

from entrolab.envs import ENV_BUDGETS

USAGE = """usage: entrolab COMMAND [flags]   (entrolab COMMAND --help for the flags)

commands:
  tasks      every task name (built-in, file tasks, rg:<reasoning-gym dataset>) with a one-line description
  pretrain   warm-start a tiny model on a task's imperfect demonstrations -> a HF model folder
  eval       sample N completions per test prompt: accuracy, length, format errors, pass@k
  train      RL post-training with a preset or a choice per axis; --resume RUN_DIR continues a run
  demo       base model (cached) + GRPO training + eval, one command
  methods    every registered method per axis, with its paper (--json machine-readable, --markdown docs/methods.md)
  compare    several methods x seeds on the same base model and data order, then the report
  report     render CMP/report.html again from a comparison folder's saved metrics (no training)
  prefs      offline preference optimisation (dpo, power_dl) on pairs from a file or a task's verifier
  rm train   a Bradley-Terry reward model on a task's verifier pairs (or --pairs FILE), optionally with a spurious
             feature; `entrolab train --reward-model DIR` then trains against it, the verifier logged as gold
"""


@dataclass(frozen=True)
class PretrainArgs:
    """Warm-start a tiny model on a task's deliberately imperfect demonstrations."""

    out: str
    """Output folder (a normal Hugging Face model folder)."""
    task: str | None = None
    """Task name: arithmetic, countdown, jsonl, math or rg:<name> (`entrolab tasks` lists them)."""
    env: str | None = None
    """A multi-turn environment instead of a task: calc, lookup or grid (demonstrations of tool use)."""
    task_path: str | None = None
    """For task=jsonl or math: a .jsonl, .json, .parquet or .csv file or a save_to_disk folder."""
    prompt_field: str | None = None
    """File tasks: the prompt column (default: prompt, question or problem)."""
    answer_field: str | None = None
    """File tasks: the answer column (default: answer, solution or ground_truth)."""
    data_split: str | None = None
    """File tasks: the split of a save_to_disk DatasetDict used as the pool (default: its train/test splits)."""
    test_fraction: float | None = None
    """File tasks: fraction held out as the test split when the data has one split (default 0.2)."""
    task_options: Annotated[tuple[str, ...], arg(aliases=("--task-option",))] = ()
    """The task config's fields as 'key=value' (a reasoning-gym generator's options, countdown's n_numbers)."""
    tokenizer: Literal["auto", "char", "bytes", "bpe"] = "auto"
    """char: the built-in alphabet; bytes: any UTF-8; bpe: byte-level BPE trained on the task's text; auto:
    char when the task's text fits the alphabet, else bytes."""
    loss: str = "cross_entropy"
    """The supervised loss (an sft_loss: cross_entropy, or entropy_sft, Light-IF's entropy-preserving SFT)."""
    loss_options: Annotated[tuple[str, ...], arg(aliases=("--loss-option",))] = ()
    """Options of the loss as 'method.field=value', e.g. 'entropy_sft.token_ratio=0.5'."""
    size: Literal["tiny1m", "tiny10m"] = "tiny1m"
    """Model size preset."""
    steps: int | None = None
    """Optimizer steps (default: the PretrainConfig default)."""
    seed: int = 0
    """Seed of the task splits, the weights and the demonstrations."""
    threads: int = 2
    """torch CPU threads."""
    eval_samples: int = 16
    """Samples per test prompt for the report after training (0: skip the evaluation)."""


@dataclass(frozen=True)
class EvalArgs:
    """Sample N completions per prompt of a split and report accuracy, length, format errors and pass@k."""

    model: str
    """Local Hugging Face causal-LM folder."""
    task: str | None = None
    """Task name: arithmetic, countdown, jsonl, math or rg:<name> (`entrolab tasks` lists them)."""
    env: str | None = None
    """A multi-turn environment instead of a task: calc, lookup or grid (success, turns, tool calls)."""
    task_path: str | None = None
    """For task=jsonl or math: a .jsonl, .json, .parquet or .csv file or a save_to_disk folder."""
    prompt_field: str | None = None
    """File tasks: the prompt column (default: prompt, question or problem)."""
    answer_field: str | None = None
    """File tasks: the answer column (default: answer, solution or ground_truth)."""
    data_split: str | None = None
    """File tasks: the split of a save_to_disk DatasetDict used as the pool (default: its train/test splits)."""
    test_fraction: float | None = None
    """File tasks: fraction held out as the test split when the data has one split (default 0.2)."""
    task_options: Annotated[tuple[str, ...], arg(aliases=("--task-option",))] = ()
    """The task config's fields as 'key=value' (a reasoning-gym generator's options, countdown's n_numbers)."""
    chat_template: Literal["auto", "none"] = "auto"
    """auto: render prompts with the model's chat template when its tokenizer has one; none: plain prompts."""
    system_prompt: str | None = None
    """A system message before each prompt (needs a chat template)."""
    split: Literal["train", "test"] = "test"
    """Which split to evaluate."""
    samples: int = 16
    """Completions per prompt (N of pass@k)."""
    limit: int | None = None
    """Only the first N prompts of the split."""
    max_new_tokens: int | None = None
    """Maximum completion length (default 32), or with env the episode's budget (default: the env's own)."""
    turn_tokens: int = 24
    """With env: the most tokens of one model turn."""
    max_turns: int | None = None
    """With env: model turns per episode (default: the environment's own)."""
    temperature: float = 1.0
    """Sampling temperature."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    seed: int = 0
    """Seed of the task splits and the sampling."""
    threads: int = 2
    """torch CPU threads."""
    json: bool = False
    """Print one JSON object on stdout instead of a table."""


@dataclass(frozen=True)
class DemoArgs:
    """Base model (built once and cached) + GRPO training + evaluation of base and final, one command."""

    out: str = "runs/demo"
    """Run folder."""
    task: str = "arithmetic"
    """Task to learn."""
    steps: int = 150
    """GRPO steps."""
    cache: str | None = None
    """Where base models are cached (default: $ENTROLAB_CACHE or ~/.cache/entrolab)."""
    seed: int = 0
    """Seed of the base model and the run."""
    progress: bool = True
    """Show a live progress bar."""


def _tyro(cls, args: list[str], default=None, prog: str = "entrolab"):
    """Parse flags into ``cls``; validation (``__post_init__``) runs once, after parsing, with our messages."""
    import tyro

    from entrolab.config import unvalidated

    with unvalidated():
        raw = tyro.cli(cls, args=args, default=default, prog=prog)
    return replace(raw)


def _setup(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _make_task(args, seed: int):
    from entrolab.data import task_of

    env = getattr(args, "env", None)  # commands without --env (demo) have a task only
    if (args.task is None) == (env is None):
        raise ValueError(f"give one of --task NAME or --env NAME, got task={args.task!r}, env={env!r}")
    return task_of(args, seed)


def _table(title: str, rows: dict[str, float]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in rows.items():
        t.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    Console().print(t)


# --- commands ---------------------------------------------------------------------------------------------
def cmd_pretrain(argv: list[str]) -> int:
    from entrolab.evaluate import evaluate
    from entrolab.models import load_policy
    from entrolab.pretrain import PretrainConfig, pretrain

    args = _tyro(PretrainArgs, argv, prog="entrolab pretrain")
    _setup(args.threads)
    task = _make_task(args, args.seed)
    steps = {"steps": args.steps} if args.steps else {}
    cfg = PretrainConfig(
        size=args.size,
        seed=args.seed,
        tokenizer=args.tokenizer,
        loss=args.loss,
        loss_options=tuple(args.loss_options),
        **steps,
    )
    t0 = time.perf_counter()
    stats = pretrain(task, args.out, cfg, log=_pretrain_logger(cfg.steps))
    print(
        f"pretrained {stats['parameters']:,} parameters on {args.task or args.env} in {stats['seconds']:.1f} s "
        f"(final loss {stats['final_loss']:.3f}) -> {args.out}"
    )
    if args.eval_samples:
        model, tok = load_policy(args.out)
        budget = {"max_new_tokens": ENV_BUDGETS[args.env]} if args.env else {}
        ev = evaluate(model, tok, task, samples=args.eval_samples, seed=args.seed, **budget)
        stats["eval"] = ev
        stats["total_seconds"] = time.perf_counter() - t0
        (Path(args.out) / "pretrain.json").write_text(json.dumps(stats, indent=2))
        _table(f"base policy on {args.task or args.env} (test split)", ev)
    return 0


def _pretrain_logger(total: int):
    def log(step: int, loss: float) -> None:
        if step % 100 == 0 or step == total:
            print(f"  step {step}/{total}  loss {loss:.3f}", flush=True)

    return log


def cmd_eval(argv: list[str]) -> int:
    from entrolab.chat import with_chat_template
    from entrolab.evaluate import evaluate
    from entrolab.models import load_policy

    args = _tyro(EvalArgs, argv, prog="entrolab eval")
    _setup(args.threads)
    model, tok = load_policy(args.model)
    task = _make_task(args, args.seed)
    if args.env is None:
        task = with_chat_template(task, tok, args.chat_template, args.system_prompt)
    budget = args.max_new_tokens or (ENV_BUDGETS[args.env] if args.env else 32)
    ev = evaluate(
        model,
        tok,
        task,
        split=args.split,
        samples=args.samples,
        max_new_tokens=budget,
        turn_tokens=args.turn_tokens,
        max_turns=args.max_turns,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        limit=args.limit,
    )
    if args.json:
        print(json.dumps(ev))
    else:
        _table(f"{args.model} on {args.task or args.env} ({args.split} split, {args.samples} samples/prompt)", ev)
    return 0


RESUME_FLAGS = ("steps", "progress", "threads")  # what --resume may change in the saved config


def cmd_train(argv: list[str]) -> int:
    from entrolab.config import TrainCommand as command
    from entrolab.config import TrainConfig, base_config
    from entrolab.trainer import train

    first = _tyro(command, argv, default=command(cfg=TrainConfig()), prog="entrolab train")
    if first.resume is not None:
        run = Path(first.resume)
        path = run / "config.json"
        if not path.is_file():
            raise ValueError(f"--resume {first.resume!r}: no config.json there (is it a run folder?)")
        from entrolab.checkpoint import has_checkpoint

        if not has_checkpoint(run):
            raise ValueError(f"--resume {first.resume!r}: no checkpoint there yet; start it again with --overwrite")
        if first.config is not None or first.overwrite:
            raise ValueError("--resume takes the saved config; --config and --overwrite are not allowed with it")
        saved = TrainConfig.from_json(json.loads(path.read_text()))
        cfg = replace(_tyro(command, argv, default=command(cfg=saved), prog="entrolab train --resume").cfg)
        changed = sorted(k for k, v in cfg.to_json().items() if saved.to_json()[k] != v and k not in RESUME_FLAGS)
        if changed:
            raise ValueError(
                f"--resume takes the saved config; flags changing {changed} are not allowed "
                f"(only --{', --'.join(RESUME_FLAGS)})"
            )
        summary = train(cfg, resume=True)
    else:
        base = base_config(first.cfg.preset, first.config)
        args = _tyro(command, argv, default=command(cfg=base), prog="entrolab train")
        if not args.cfg.model:
            raise ValueError("--model is required: a local Hugging Face model folder (e.g. from entrolab pretrain)")
        summary = train(replace(args.cfg), overwrite=args.overwrite)  # replace() validates
    _print_summary(summary)
    return 0


def _print_summary(summary: dict) -> None:
    base, final = summary["base_eval"], summary["final_eval"]
    keys = [k for k in final if k.startswith(("pass@", "maj@"))] + [
        "accuracy",
        "entropy",
        "mean_length",
        "format_error_rate",
    ]
    from rich.console import Console
    from rich.table import Table

    t = Table(
        title=f"{summary['config']['out']}: {summary['steps']} steps, {summary['wall_time_s']:.0f} s "
        f"({summary['s_per_step']:.2f} s/step)"
    )
    for col in ("metric", "base", "final", "change"):
        t.add_column(col, justify="left" if col == "metric" else "right")
    for k in keys:
        t.add_row(k, f"{base[k]:.3f}", f"{final[k]:.3f}", f"{final[k] - base[k]:+.3f}")
    Console().print(t)


def cmd_demo(argv: list[str]) -> int:
    from entrolab.config import base_config
    from entrolab.pretrain import PretrainConfig, cached_base
    from entrolab.trainer import train

    args = _tyro(DemoArgs, argv, prog="entrolab demo")
    _setup(2)
    t0 = time.perf_counter()
    base = cached_base(_make_task(args, args.seed), PretrainConfig(seed=args.seed), args.cache)
    cfg = replace(
        base_config("grpo"),
        model=str(base),
        task=args.task,
        out=args.out,
        steps=args.steps,
        seed=args.seed,
        progress=args.progress,
    )
    summary = train(cfg)
    _print_summary(summary)
    print(f"demo wall time {time.perf_counter() - t0:.0f} s; run folder {args.out}")
    return 0


def cmd_methods(argv: list[str]) -> int:
    from entrolab import catalogue

    as_json = "--json" in argv
    bad = [a for a in argv if a not in ("--json", "--markdown", "--engines")]
    if bad:
        raise ValueError(f"entrolab methods takes only --json, --markdown or --engines, got {bad}")
    if "--engines" in argv:  # what each verl / TRL loss, estimator and option is in the catalogue
        from entrolab.methods_doc import render_engines_markdown

        sys.stdout.write(render_engines_markdown())
        return 0
    if "--markdown" in argv:
        from entrolab.methods_doc import render_methods_markdown

        sys.stdout.write(render_methods_markdown())
        return 0
    entries = catalogue.entries()
    if as_json:
        print(
            json.dumps(
                {
                    axis: [
                        {
                            "name": e.name,
                            "paper": e.paper,
                            "summary": e.summary,
                            "reconstructed": e.reconstructed,
                        }
                        for e in es
                    ]
                    for axis, es in entries.items()
                },
                indent=2,
            )
        )
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title="registered methods")
    for col in ("axis", "name", "paper", "summary"):
        t.add_column(col)
    for axis, es in entries.items():
        for e in es:
            t.add_row(axis, e.name, e.paper + (" (reconstructed)" if e.reconstructed else ""), e.summary)
    Console(width=200).print(t)
    from entrolab.config import PRESETS

    print("presets: " + ", ".join(sorted(PRESETS)))
    return 0


def cmd_compare(argv: list[str]) -> int:
    from entrolab.compare import CompareArgs, compare

    args = _tyro(CompareArgs, argv, prog="entrolab compare")
    compare(args)
    return 0


def cmd_report(argv: list[str]) -> int:
    from entrolab.report import render_report

    if len(argv) != 1 or argv[0].startswith("-"):
        raise ValueError("usage: entrolab report CMP_DIR (a folder written by entrolab compare)")
    if not Path(argv[0]).is_dir():
        raise ValueError(f"comparison folder {argv[0]!r} does not exist")
    print(f"report: {render_report(Path(argv[0]))}")
    return 0


def cmd_rm(argv: list[str]) -> int:
    if not argv or argv[0] != "train":
        raise ValueError("usage: entrolab rm train --task T --out DIR [flags] (entrolab rm train --help)")
    from entrolab.reward_model import RMConfig
    from entrolab.rm_train import train_rm

    cfg = _tyro(RMConfig, argv[1:], prog="entrolab rm train")
    summary = train_rm(cfg)
    rows = {
        "held-out pairwise accuracy": summary["accuracy"],
        "... without the spurious feature": summary["accuracy_clean"],
    }
    if summary["accuracy_flipped"] is not None:
        rows["... with the feature on the rejected side"] = summary["accuracy_flipped"]
    rows.update({"train pairs": summary["pairs"]["train"], "seconds": summary["train_s"]})
    _table(f"reward model -> {cfg.out}", rows)
    return 0


@dataclass(frozen=True)
class PrefsArgs:
    """Offline preference optimisation (DPO, POWER-DL) on {prompt, chosen, rejected} pairs."""

    model: str
    """A local HF causal-LM folder: the initial policy and the frozen reference."""
    out: str
    """Run folder (final/, metrics.jsonl, summary.json)."""
    pairs: str | None = None
    """A JSONL of {"prompt", "chosen", "rejected"}; without it, --task's verifier makes --n-pairs pairs."""
    task: str | None = None
    """A built-in task whose verifier makes the pairs (right over wrong or badly formatted), written to
    OUT/pairs.jsonl."""
    n_pairs: int = 200
    """Pairs made from --task."""
    loss: str = "dpo"
    """The preference_loss: dpo, power_dl (`entrolab methods`)."""
    preset: str | None = None
    """A paper's loss and options (dpo, power_dl); --loss and --option are applied on top."""
    options: Annotated[tuple[str, ...], arg(aliases=("--option",))] = ()
    """Options of the loss as 'method.field=value', e.g. 'dpo.beta=0.3'."""
    steps: int = 50
    """Optimizer steps."""
    batch_size: int = 8
    """Pairs per step."""
    lr: float = 1e-4
    """AdamW learning rate."""
    seed: int = 0
    """Seed of the pairs, the split and the batch order."""
    threads: int | None = None
    """torch threads (default: torch's)."""


def cmd_prefs(argv: list[str]) -> int:
    from entrolab.pairs import task_pairs, write_pairs
    from entrolab.prefs import PREFS_PRESETS, PrefsConfig, train_prefs

    args = _tyro(PrefsArgs, argv, prog="entrolab prefs")
    loss, options = args.loss, tuple(args.options)
    if args.preset is not None:
        if args.preset not in PREFS_PRESETS:
            raise ValueError(f"unknown prefs preset {args.preset!r}; known: {', '.join(sorted(PREFS_PRESETS))}")
        loss, preset_options = PREFS_PRESETS[args.preset]
        options = (*preset_options, *options)
    if (args.pairs is None) == (args.task is None):
        raise ValueError("give the pairs as --pairs FILE or make them from a task's verifier with --task NAME")
    if args.threads:
        _setup(args.threads)
    pairs = args.pairs
    if pairs is None:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        pairs = str(write_pairs(task_pairs(args.task, args.n_pairs, args.seed), Path(args.out) / "pairs.jsonl"))
    cfg = PrefsConfig(
        model=args.model,
        pairs=pairs,
        out=args.out,
        loss=loss,
        options=options,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
    )
    summary = train_prefs(cfg)
    rows = {k: v for k, v in summary.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    for when in ("before", "after"):
        for k, v in (summary.get(f"eval_{when}") or {}).items():
            rows[f"{when}: {k}"] = v
    _table(f"{loss} -> {args.out}", rows)
    return 0


def cmd_tasks(argv: list[str]) -> int:
    from entrolab.envs import env_list
    from entrolab.tasks import task_list

    as_json = "--json" in argv
    bad = [a for a in argv if a != "--json"]
    if bad:
        raise ValueError(f"entrolab tasks takes only --json, got {bad}")
    rows, envs = task_list(), env_list()
    if as_json:
        out = [{"name": n, "description": d} for n, d in rows]
        print(json.dumps(out + [{"name": n, "description": d, "env": True} for n, d in envs], indent=2))
        return 0
    width = max(len(n) for n, _ in rows + envs)
    for name, description in rows:
        print(f"{name:<{width}}  {description}")
    print("\nmulti-turn environments (--env NAME):")
    for name, description in envs:
        print(f"{name:<{width}}  {description}")
    return 0


COMMANDS = {
    "tasks": cmd_tasks,
    "pretrain": cmd_pretrain,
    "eval": cmd_eval,
    "train": cmd_train,
    "demo": cmd_demo,
    "methods": cmd_methods,
    "compare": cmd_compare,
    "report": cmd_report,
    "rm": cmd_rm,
    "prefs": cmd_prefs,
}


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    cmd = COMMANDS.get(argv[0])
    if cmd is None:
        print(f"entrolab: unknown command {argv[0]!r}; known: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    from entrolab.models import ModelLoadError
    from entrolab.rewards import RewardError

    try:
        return cmd(argv[1:])
    except RewardError as e:
        print(f"entrolab: reward error: {e}", file=sys.stderr)
        return 1
    except RuntimeError as e:  # compare: some runs failed (each reported above); train: non-finite updates
        print(f"entrolab: {e}", file=sys.stderr)
        return 1
    except (ValueError, ModelLoadError, FileNotFoundError) as e:
        print(f"entrolab: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
