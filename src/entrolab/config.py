"""The training configuration: one frozen dataclass, presets named after papers, TOML files and overrides.

Precedence, lowest to highest: the dataclass defaults < ``preset`` < the ``--config`` TOML file < command-line
flags. The resolved configuration is saved as ``RUN_DIR/config.json`` and is what ``--resume`` reads.
"""

from __future__ import annotations

import ast
import contextlib
import contextvars
import dataclasses
import json
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from tyro.conf import arg

from entrolab import registry
from entrolab.lean import Backend

LRSchedule = Literal["constant", "cosine", "linear"]
OnRewardError = Literal["raise", "skip"]
_VALIDATE = contextvars.ContextVar("entrolab_validate_config", default=True)


@contextlib.contextmanager
def unvalidated() -> Iterator[None]:
    """Build configs without validation inside this block (the CLI parses flags first, then validates once,
    so that a bad value is reported by our own message rather than the argument parser's)."""
    token = _VALIDATE.set(False)
    try:
        yield
    finally:
        _VALIDATE.reset(token)


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; every field has its default here and nowhere else."""

    model: str = ""
    """Local Hugging Face causal-LM folder (e.g. from `entrolab pretrain`)."""
    task: str = "arithmetic"
    """Task name: arithmetic, countdown or jsonl."""
    task_path: str | None = None
    """For task=jsonl: the local .jsonl file of {"prompt", "answer"} lines."""
    reward_fn: str | None = None
    """Optional 'package.module:function' (completion, example) -> float | Verdict replacing the task's verifier."""
    on_reward_error: OnRewardError = "raise"
    """What a raising reward function does: stop the run (raise) or drop the sample and count it (skip)."""
    out: str = "runs/run"
    """Run folder: config.json, metrics.jsonl, checkpoint.pt, summary.json, final/."""
    preset: str | None = None
    """A named recipe (grpo, dr_grpo, dapo, rloo) applied before the config file and the flags."""
    seed: int = 0
    """Seed of the data order, the sampling and the minibatch shuffles."""
    task_seed: int = 0
    """Seed of the task's train/test split; kept apart from `seed` so that every seed of a comparison is
    evaluated on the same test problems and none of them is in the base model's (seed 0) training split."""
    threads: int = 2
    """torch CPU threads."""

    # --- rollout -------------------------------------------------------------------------------------------
    steps: int = 200
    """Training steps (one rollout batch each)."""
    prompts_per_step: int = 16
    """P: prompts sampled per step."""
    group_size: int = 8
    """G: completions per prompt (>= 2 for group baselines)."""
    max_new_tokens: int = 32
    """Maximum completion length; completions without EOS by then are truncated."""
    temperature: float = 1.0
    """Sampling temperature; the trained log-probs are those of softmax(logits / temperature)."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    backend: Backend = "auto"
    """Forward used for sampling and the teacher-forced pass: 'lean' (entrolab.lean: each distinct prompt run
    once, no padding in the dense layers, preallocated KV cache; Llama/Qwen2/Mistral), 'hf' (the model's own
    forward), 'auto' (lean where it applies). Same function, same samples' distribution."""

    # --- the algorithm, one registered name per axis ----------------------------------------------------------
    advantage: str = "grpo"
    """Advantage estimator."""
    policy_loss: str = "ppo_clip"
    """Policy loss (surrogate)."""
    aggregation: str = "seq-mean-token-mean"
    """How the per-token loss is reduced to a scalar."""
    reward_shapers: Annotated[tuple[str, ...], arg(aliases=("--reward-shaper",))] = ()
    """Reward shapers applied in order before the advantage."""
    token_filters: Annotated[tuple[str, ...], arg(aliases=("--token-filter",))] = ()
    """Token filters / weighters applied to each minibatch."""
    regularizers: Annotated[tuple[str, ...], arg(aliases=("--regularizer",))] = ()
    """Per-token terms added to the loss (kl, entropy_bonus, ...)."""
    schedules: Annotated[tuple[str, ...], arg(aliases=("--schedule",))] = ()
    """Controllers across steps that set other methods' options each step (adaptive_entropy, safe_pid, ...)."""
    options: Annotated[tuple[str, ...], arg(aliases=("--option",))] = ()
    """Method options as 'method.field=value', e.g. 'ppo_clip.eps_high=0.28' or 'kl.coef=0.01'."""
    norm_len: int | None = None
    """Constant of seq-mean-token-sum-norm (Dr.GRPO); defaults to max_new_tokens."""

    # --- the update ----------------------------------------------------------------------------------------
    ppo_epochs: int = 1
    """mu: passes over each rollout batch."""
    minibatches: int = 1
    """Optimizer steps per epoch (the batch is split into this many minibatches)."""
    micro_batch_size: int | None = None
    """Sequences per forward/backward (gradient accumulation); None = the whole minibatch."""
    lr: float = 1e-4
    """Peak AdamW learning rate (1e-4 suits the tiny models; 3e-4 already destabilises GRPO on them)."""
    lr_schedule: LRSchedule = "constant"
    """Learning-rate schedule after warm-up."""
    warmup_steps: int = 10
    """Linear warm-up, in optimizer steps (softens Adam's first, sign-like steps)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    adam_betas: tuple[float, float] = (0.9, 0.99)
    """AdamW betas."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm (<= 0 disables)."""

    # --- eval, logging, checkpoints --------------------------------------------------------------------------
    eval_every: int = 50
    """Evaluate on the test split every N steps (0: only at start and end)."""
    eval_samples: int = 16
    """Samples per test prompt for pass@k."""
    eval_prompts: int | None = None
    """Evaluate on the first N test prompts (None: all)."""
    save_every: int = 25
    """Write an atomic checkpoint every N steps (and on Ctrl-C / SIGTERM)."""
    progress: bool = True
    """Show a live progress bar."""
    log_to: tuple[str, ...] = ()
    """Extra metric sinks besides metrics.jsonl: tensorboard (RUN_DIR/tensorboard), mlflow (RUN_DIR/mlruns)."""

    def __post_init__(self) -> None:
        if not _VALIDATE.get():
            return
        _positive = (
            "steps",
            "prompts_per_step",
            "max_new_tokens",
            "ppo_epochs",
            "minibatches",
            "eval_samples",
        )
        for name in _positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.group_size < 2:
            raise ValueError(f"group_size must be >= 2, got {self.group_size} (group baselines need two samples)")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.backend not in get_args(Backend):
            raise ValueError(f"backend must be one of {list(get_args(Backend))}, got {self.backend!r}")
        for name in ("warmup_steps", "eval_every", "save_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1 or None, got {self.micro_batch_size}")
        if self.norm_len is not None and self.norm_len < 1:
            raise ValueError(f"norm_len must be >= 1 or None, got {self.norm_len}")
        if (self.prompts_per_step * self.group_size) % self.minibatches:
            raise ValueError(
                f"minibatches={self.minibatches} must divide the batch of "
                f"{self.prompts_per_step * self.group_size} sequences (prompts_per_step * group_size)"
            )
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.lr_schedule not in ("constant", "cosine", "linear"):
            raise ValueError(f"lr_schedule must be constant, cosine or linear, got {self.lr_schedule!r}")
        if self.on_reward_error not in ("raise", "skip"):
            raise ValueError(f"on_reward_error must be 'raise' or 'skip', got {self.on_reward_error!r}")
        from entrolab.tasks import TASKS

        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; known: {', '.join(TASKS)}")
        bad_sinks = sorted(set(self.log_to) - {"tensorboard", "mlflow"})
        if bad_sinks:
            raise ValueError(f"unknown log_to sink(s) {bad_sinks}; allowed: tensorboard, mlflow")
        if self.task == "jsonl" and not self.task_path:
            raise ValueError("task=jsonl needs --task-path FILE.jsonl")
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; known: {', '.join(sorted(PRESETS))}")
        self.method_options()  # validates names, option keys and values

    def selected(self) -> list[tuple[str, str]]:
        """(axis, name) of every method this run uses."""
        return [
            ("advantage", self.advantage),
            ("policy_loss", self.policy_loss),
            ("aggregation", self.aggregation),
            *(("reward_shaper", n) for n in self.reward_shapers),
            *(("token_filter", n) for n in self.token_filters),
            *(("regularizer", n) for n in self.regularizers),
            *(("schedule", n) for n in self.schedules),
        ]

    def method_options(self) -> dict[str, dict[str, Any]]:
        """The parsed ``options`` per method name; raises on an unknown method, field or bad value."""
        chosen = {name: registry.get(axis, name) for axis, name in self.selected()}
        out: dict[str, dict[str, Any]] = {name: {} for name in chosen}
        for item in self.options:
            key, eq, raw = item.partition("=")
            method, dot, fld = key.strip().rpartition(".")
            if not eq or not dot:
                raise ValueError(f"option {item!r} must look like 'method.field=value'")
            if method not in chosen:
                raise ValueError(
                    f"option {item!r} names method {method!r}, which this run does not use: {sorted(chosen)}"
                )
            out[method][fld] = _parse_value(raw.strip())
        for name, opts in out.items():
            chosen[name].make_config(opts)  # unknown keys and invalid values raise here
        return out

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainConfig:
        kinds = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(kinds))
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown}; allowed: {sorted(kinds)}")
        fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**fixed)


def _parse_value(raw: str) -> Any:
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw  # a bare word such as k3 or batch


# A preset is a paper's recipe: a named choice per axis plus hyper-parameters, never a special code path.
def _recipe(advantage: str = "grpo", policy_loss: str = "ppo_clip", aggregation: str = "token-mean", **kw: Any) -> dict:
    """A preset sets every axis (unset ones to nothing), so presets never inherit each other's choices."""
    axes = dict(reward_shapers=(), token_filters=(), regularizers=(), schedules=(), options=())
    return dict(advantage=advantage, policy_loss=policy_loss, aggregation=aggregation, **{**axes, **kw})


DAPO_CLIP = ("ppo_clip.eps_low=0.2", "ppo_clip.eps_high=0.28")
PRESETS: dict[str, dict[str, Any]] = {
    # DeepSeekMath (arXiv:2402.03300) eq. 3, without the KL term (beta = 0, as TRL's default)
    "grpo": _recipe(aggregation="seq-mean-token-mean"),
    # Understanding R1-Zero-Like Training (arXiv:2503.20783): no std, no length normalisation
    "dr_grpo": _recipe(advantage="dr_grpo", aggregation="seq-mean-token-sum-norm"),
    # DAPO (arXiv:2503.14476): clip-higher, token-level mean, overlong filtering
    "dapo": _recipe(token_filters=("overlong_filter",), options=DAPO_CLIP),
    # Back to Basics (arXiv:2402.14740): leave-one-out baseline
    "rloo": _recipe(advantage="rloo", aggregation="seq-mean-token-mean"),
    # --- entropy control, wave 1 -----------------------------------------------------------------------
    # a static entropy bonus (the standard baseline of every entropy paper)
    "entropy_bonus": _recipe(regularizers=("entropy_bonus",), options=("entropy_bonus.coef=0.001",)),
    # Skywork-OR1 (arXiv:2505.22312): entropy bonus whose coefficient tracks a target entropy
    "skywork_or1": _recipe(
        regularizers=("entropy_bonus",), schedules=("adaptive_entropy",), options=("entropy_bonus.coef=0.0",)
    ),
    # The Entropy Mechanism (arXiv:2505.22617): Clip-Cov / KL-Cov. Both act through log pi - log pi_old, so the
    # update is split into 4 minibatches (KL-Cov's term is exactly 0 on a purely on-policy pass).
    "clip_cov": _recipe(
        policy_loss="clip_cov",
        minibatches=4,
        options=("clip_cov.ratio=0.0002", "clip_cov.cov_lb=1.0", "clip_cov.cov_ub=5.0"),
    ),
    "kl_cov": _recipe(policy_loss="kl_cov", minibatches=4, options=("kl_cov.ratio=0.002", "kl_cov.coef=1.0")),
    # Beyond the 80/20 Rule (arXiv:2506.01939): DAPO clip, gradients through the top-20 % entropy tokens only
    "forking_tokens": _recipe(
        token_filters=("forking_tokens",), options=(*DAPO_CLIP, "ppo_clip.dual_clip_c=10.0", "forking_tokens.rho=0.2")
    ),
    "low_entropy_tokens": _recipe(
        token_filters=("low_entropy_tokens",),
        options=(*DAPO_CLIP, "ppo_clip.dual_clip_c=10.0", "low_entropy_tokens.rho=0.8"),
    ),
    # On the Entropy Dynamics in RFT (arXiv:2602.03392): GRPO + discriminator clipping, Clip_B and Clip_V
    "clip_b": _recipe(token_filters=("discriminator_clip",), options=("discriminator_clip.variant='B'",)),
    "clip_v": _recipe(token_filters=("discriminator_clip",), options=("discriminator_clip.variant='V'",)),
    # Rethinking Entropy Interventions (arXiv:2510.10150): STEER token reweighting
    "steer": _recipe(policy_loss="steer"),
    # Rethinking Entropy Regularization (arXiv:2509.25133): SIREN, self-anchored top-p peak entropy
    "siren": _recipe(
        advantage="dr_grpo",
        aggregation="seq-mean-token-sum-norm",
        regularizers=("siren",),
        schedules=("siren_anchor",),
        options=(
            "ppo_clip.eps_low=0.28",
            "ppo_clip.eps_high=0.28",
            "siren.coef=0.005",
            "siren.top_p=0.8",
            "siren.quantile=0.8",
        ),
    ),
    # EPO (arXiv:2509.22576): entropy bonus + smoothing corridor with phase-based weighting
    "epo": _recipe(
        regularizers=("epo",),
        schedules=("epo_phase",),
        options=("epo.coef=0.001", "epo.low_ratio=0.0", "epo.high_ratio=2.0"),
    ),
    # AEPO (arXiv:2510.14545): entropy-balanced clipping with stop-gradient + entropy-aware advantage weight
    "aepo": _recipe(policy_loss="aepo", token_filters=("aepo_entropy_advantage",)),
    # Light-IF (arXiv:2508.03178): TEA-RL entropy-weighted bonus with a k3 KL to the reference
    "tea_rl": _recipe(regularizers=("tea_rl", "kl"), options=("kl.coef=0.001", "kl.estimator='k3'")),
    # SAFE: entropy-gated KL with PID-controlled thresholds (code ryyzn9/SAFE)
    "safe": _recipe(
        regularizers=("safe", "entropy_bonus"), schedules=("safe_pid",), options=("entropy_bonus.coef=0.01",)
    ),
    # SPEAR (arXiv:2509.22601): Dr.BoT update with covariance-based token clipping
    "spear": _recipe(
        advantage="dr_grpo",
        aggregation="seq-mean-token-sum-norm",
        token_filters=("overlong_filter", "spear_cov_clip"),
        options=(*DAPO_CLIP, "ppo_clip.dual_clip_c=10.0"),
    ),
}


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a run TOML: top-level keys are TrainConfig fields; ``[options.METHOD]`` tables set method options."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"config file {str(path)!r} does not exist")
    try:
        data = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"config file {str(path)!r} is not valid TOML: {e}") from e
    opts = data.pop("options", None)
    if isinstance(opts, dict):
        data["options"] = tuple(f"{m}.{k}={v!r}" for m, table in opts.items() for k, v in table.items())
    elif opts is not None:
        data["options"] = tuple(opts)
    return data


def base_config(preset: str | None = None, toml_path: str | None = None) -> TrainConfig:
    """Defaults, then the preset (named here or in the file), then the TOML file."""
    file_data = load_toml(toml_path) if toml_path else {}
    preset = preset or file_data.get("preset")
    merged: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; known: {', '.join(sorted(PRESETS))}")
        merged.update(PRESETS[preset], preset=preset)
    merged.update(file_data)
    if preset is not None:
        merged["preset"] = preset
    return TrainConfig.from_json(merged)


def save_json(cfg: TrainConfig, path: Path) -> None:
    path.write_text(json.dumps(cfg.to_json(), indent=2))


__all__ = ["PRESETS", "LRSchedule", "OnRewardError", "TrainConfig", "base_config", "load_toml", "save_json"]
