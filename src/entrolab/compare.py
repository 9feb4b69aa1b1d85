"""``entrolab compare``: methods x seeds on one base model, as separate worker processes, then the report.

Layout of a comparison folder::

    CMP/compare.json              the grid: task, methods, seeds, steps, base model, overrides
    CMP/base_eval.json            the base model's evaluation with per-problem detail (support metrics)
    CMP/<method>/seed<k>/         an ordinary run folder (config.json, metrics.jsonl, checkpoint-*.pt and their
                                  .sha256, .lock, summary.json, eval_detail.json, final/) plus worker.log
    CMP/report.html, CMP/plots/   the report (``entrolab report CMP`` renders it again from the files)

Every run of seed k uses the same base model, the same task split (``task_seed``) and the same prompts in the
same order (the data stream is a pure function of seed and position). Repeating the command skips finished
runs and resumes interrupted ones from their checkpoints; a failing run is reported with the tail of its log
and never stops the others.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from entrolab.config import TrainConfig, _parse_value
from entrolab.grid import check_fair, differences, plan_grid
from entrolab.presets import PRESET_PARTS


@dataclass(frozen=True)
class CompareArgs:
    """Run several methods over several seeds on the same base model and data order, then render the report."""

    out: str
    """Comparison folder."""
    methods: str = "grpo,clip_cov,kl_cov,forking_tokens"
    """Comma-separated preset names (see `entrolab methods`), or variants PRESET@method.field=value for a sweep
    (e.g. clip_cov@clip_cov.ratio=0.002)."""
    task: str = "arithmetic"
    """Task name."""
    env: str | None = None
    """A multi-turn environment instead of the task: calc, lookup or grid."""
    seeds: int = 3
    """Seeds 0 .. seeds-1 per method."""
    steps: int = 200
    """Training steps per run."""
    model: str | None = None
    """Base model folder; default: the cached `entrolab pretrain` base model of the task."""
    cache: str | None = None
    """Where base models are cached (default: $ENTROLAB_CACHE or ~/.cache/entrolab)."""
    workers: int | None = None
    """Runs at a time; default: one per CPU core (each run uses --threads threads)."""
    threads: int = 1
    """torch threads per run."""
    eval_every: int = 25
    """Evaluate every N steps."""
    set: tuple[str, ...] = ()
    """Overrides for every run as 'field=value', e.g. 'prompts_per_step=8' 'lr=5e-5'."""
    log_to: tuple[str, ...] = ()
    """Extra metric sinks for every run: tensorboard, mlflow."""
    recipe: str | None = None
    """The preset whose recipe part (epochs, minibatches, learning rate, aggregation, clip range, ...) every run
    shares; default: the first method's."""
    allow_unequal: tuple[str, ...] = ()
    """Config fields the runs may differ in outside their methods' own parts (refused otherwise)."""
    progress: bool = True
    """Show the live grid."""


def plan(args: CompareArgs) -> tuple[list[TrainConfig], dict[str, Any]]:
    """The run configs of the grid, validated before any work starts, and the grid's description: the shared
    recipe, what was applied to every run (a method's needs), and the table of fields that differ."""
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m.split("@")[0] not in PRESET_PARTS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown} for compare; known presets: {', '.join(sorted(PRESET_PARTS))}")
    if len(set(methods)) != len(methods):
        raise ValueError(f"methods repeat: {methods}")
    if args.seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {args.seeds}")
    overrides: dict[str, Any] = {}
    for item in args.set:
        key, eq, raw = item.partition("=")
        if not eq:
            raise ValueError(f"--set {item!r} must look like 'field=value'")
        overrides[key.strip()] = _parse_value(raw.strip())
    allowed = set(TrainConfig.__dataclass_fields__) - {"model", "task", "env", "out", "seed", "steps", "preset"}
    bad = sorted(set(overrides) - allowed)
    if bad:
        raise ValueError(f"--set cannot change {bad}; allowed fields: {sorted(allowed)}")
    grid = plan_grid(methods, args.recipe)
    runs = []
    for method in methods:
        for seed in range(args.seeds):
            fields = {**grid.fields[method], **overrides}
            cfg = replace(
                TrainConfig(),
                **fields,
                model=args.model or "",
                task=args.task,
                env=args.env,
                steps=args.steps,
                seed=seed,
                out=str(Path(args.out) / method / f"seed{seed}"),
                threads=args.threads,
                eval_every=args.eval_every,
                progress=False,
                log_to=args.log_to,
                preset=method.split("@")[0],
            )
            runs.append(cfg)
    first = {m: next(r for r in runs if Path(r.out).parent.name == m).to_json() for m in methods}
    diff = differences(first)
    check_fair(diff, {m: m for m in methods}, args.allow_unequal)
    return runs, {"recipe": grid.recipe, "notes": list(grid.notes), "differences": diff}


def show_plan(plan_info: dict[str, Any], out: Path) -> None:
    """Print and save (``CMP/grid.json``) the recipe, what was applied to every run, and the differences table."""
    from rich.console import Console
    from rich.table import Table

    out.mkdir(parents=True, exist_ok=True)
    (out / "grid.json").write_text(json.dumps(plan_info, indent=2, default=list))
    console = Console(width=max(120, 24 + 16 * len(next(iter(plan_info["differences"].values()), []))))
    console.print(f"recipe: {plan_info['recipe']}'s (shared by every run)")
    for note in plan_info["notes"]:
        console.print(f"note: {note}")
    diff = plan_info["differences"]
    if diff:
        methods = list(next(iter(diff.values())))
        t = Table(title="config fields that differ between runs (each from the method's own part)")
        for col in ("field", *methods):
            t.add_column(col)
        for key, values in diff.items():
            t.add_row(key.removeprefix("options:"), *(str(values[m]) for m in methods))
        console.print(t)


def run_status(run: Path) -> str:
    """done / resumable / new"""
    from entrolab.checkpoint import has_checkpoint

    if (run / "summary.json").is_file():
        return "done"
    if has_checkpoint(run) and (run / "config.json").is_file():
        return "resumable"
    return "new"


def last_step(run: Path) -> int:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return 0
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - 4096))
        lines = f.read().decode(errors="replace").splitlines()
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (json.JSONDecodeError, KeyError, ValueError):
            continue
    return 0


def compare(args: CompareArgs) -> Path:
    """Run the grid (skipping finished runs, resuming interrupted ones), then render the report."""
    from entrolab.data import build_task
    from entrolab.pretrain import PretrainConfig, cached_base
    from entrolab.report import render_report

    runs, info = plan(args)  # every bad name or value, and every unfair difference, fails here, before any work
    out = Path(args.out)
    show_plan(info, out)
    model = args.model or str(cached_base(build_task(args.task, 0, env=args.env), PretrainConfig(), args.cache))
    runs = [replace(r, model=model) for r in runs]
    (out / "compare.json").write_text(
        json.dumps(
            {**vars(args), "model": model, "set": list(args.set), "log_to": list(args.log_to)}, indent=2, default=list
        )
    )
    write_base_eval(runs[0], out / "base_eval.json")
    workers = args.workers or max(1, (os.cpu_count() or 1) // args.threads)
    failures = run_grid(runs, workers, progress=args.progress)
    for name, tail in failures.items():
        print(f"run {name} failed; last lines of its log:\n{tail}", file=sys.stderr)
    report = render_report(out)
    print(f"report: {report}")
    if failures:
        raise RuntimeError(f"{len(failures)} of {len(runs)} runs failed: {sorted(failures)}")
    return report


def write_base_eval(cfg: TrainConfig, path: Path) -> None:
    """The base model's test evaluation with per-problem detail, computed once per comparison folder."""
    if path.is_file():
        return
    import torch

    from entrolab.chat import with_chat_template
    from entrolab.data import task_of
    from entrolab.evaluate import evaluate
    from entrolab.models import load_policy

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    model, tok = load_policy(cfg.model)
    task = task_of(cfg, cfg.task_seed)
    if cfg.env is None:
        task = with_chat_template(task, tok, cfg.chat_template, cfg.system_prompt)
    metrics, detail = evaluate(
        model,
        tok,
        task,
        samples=cfg.eval_samples,
        max_new_tokens=cfg.response_budget,
        turn_tokens=cfg.turn_tokens,
        max_turns=cfg.max_turns,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        seed=cfg.seed,
        limit=cfg.eval_prompts,
        return_detail=True,
    )
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"metrics": metrics, **detail}))
    os.replace(tmp, path)


def run_grid(runs: list[TrainConfig], workers: int, progress: bool = True) -> dict[str, str]:
    """Run every config as its own worker process, at most ``workers`` at a time; returns failed runs' log tails."""
    pending = [r for r in runs if run_status(Path(r.out)) != "done"]
    active: dict[str, tuple[subprocess.Popen, TrainConfig, Any]] = {}
    failures: dict[str, str] = {}
    names = {r.out: str(Path(r.out).relative_to(Path(r.out).parents[1])) for r in runs}
    live = _Grid(runs, names) if progress else None
    try:
        while pending or active:
            while pending and len(active) < workers:
                cfg = pending.pop(0)
                run = Path(cfg.out)
                run.mkdir(parents=True, exist_ok=True)
                resume = run_status(run) == "resumable"
                if not resume:
                    (run / "planned_config.json").write_text(json.dumps(cfg.to_json(), indent=2))
                cmd = [sys.executable, "-m", "entrolab.compare", str(run), "--resume" if resume else "--fresh"]
                log = open(run / "worker.log", "a")  # closed when the process ends
                active[cfg.out] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), cfg, log)
            time.sleep(0.5)
            for key in list(active):
                proc, cfg, log = active[key]
                if proc.poll() is None:
                    continue
                del active[key]
                log.close()
                if proc.returncode != 0:
                    lines = (Path(cfg.out) / "worker.log").read_text(errors="replace").splitlines()
                    failures[names[cfg.out]] = "\n".join(lines[-15:])
            if live is not None:
                live.update(active, failures)
    except KeyboardInterrupt:
        for proc, _, _ in active.values():
            proc.terminate()  # each worker checkpoints on SIGTERM; the same command resumes them
        for proc, _, log in active.values():
            proc.wait()
            log.close()
        raise
    finally:
        if live is not None:
            live.stop()
    return failures


class _Grid:
    """A live table: one row per run with its state and step."""

    def __init__(self, runs: list[TrainConfig], names: dict[str, str]) -> None:
        from rich.live import Live

        self.runs, self.names = runs, names
        self.live = Live(self._table({}, {}), refresh_per_second=2)
        self.live.start()

    def _table(self, active: dict, failures: dict):
        from rich.table import Table

        t = Table(title="entrolab compare")
        for col in ("run", "state", "step"):
            t.add_column(col)
        for r in self.runs:
            name = self.names[r.out]
            state = "failed" if name in failures else "running" if r.out in active else run_status(Path(r.out))
            t.add_row(name, state, f"{last_step(Path(r.out))}/{r.steps}")
        return t

    def update(self, active: dict, failures: dict) -> None:
        self.live.update(self._table(active, failures))

    def stop(self) -> None:
        self.live.stop()


def _worker(argv: list[str]) -> int:
    """One run of the grid: ``python -m entrolab.compare RUN_DIR --fresh|--resume``."""
    from entrolab.checkpoint import CheckpointError
    from entrolab.trainer import train

    run, mode = Path(argv[0]), argv[1]
    source = run / ("config.json" if mode == "--resume" else "planned_config.json")
    cfg = TrainConfig.from_json(json.loads(source.read_text()))
    try:
        train(cfg, resume=mode == "--resume", overwrite=mode != "--resume")  # a fresh start replaces a partial run
    except CheckpointError as e:  # every checkpoint damaged: start this run again rather than fail each time
        print(f"{e}; starting {run} again", file=sys.stderr, flush=True)
        train(cfg, overwrite=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(_worker(sys.argv[1:]))
