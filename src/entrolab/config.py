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
from typing import Annotated, Any, get_args

from tyro.conf import arg

from entrolab import catalogue
from entrolab.chat import CHAT_TEMPLATE_MODES, ChatTemplateMode
from entrolab.kinds import Backend, LRSchedule, RolloutKind
from entrolab.presets import AXIS_FIELDS, PRESETS
from entrolab.rewards import OnRewardError

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
    """Task name: arithmetic, countdown, jsonl, math or rg:<reasoning-gym dataset> (`entrolab tasks` lists them)."""
    task_path: str | None = None
    """For task=jsonl or math: a local .jsonl, .json, .parquet or .csv file, or a save_to_disk folder."""
    prompt_field: str | None = None
    """File tasks: the prompt column (default: the first of prompt, question, problem)."""
    answer_field: str | None = None
    """File tasks: the answer column (default: the first of answer, solution, ground_truth; '#### x' and
    '\\boxed{x}' are reduced to x)."""
    data_split: str | None = None
    """File tasks: the split of a save_to_disk DatasetDict to use as the pool (default: its train/test splits)."""
    test_fraction: float | None = None
    """File tasks: fraction held out as the test split when the data has one split (default 0.2)."""
    task_options: Annotated[tuple[str, ...], arg(aliases=("--task-option",))] = ()
    """The task config's fields as 'key=value', e.g. 'n_numbers=4' (countdown) or a reasoning-gym option."""
    chat_template: ChatTemplateMode = "auto"
    """auto: render prompts with the tokenizer's chat template when it has one (add_generation_prompt); none:
    plain prompts."""
    system_prompt: str | None = None
    """A system message before each prompt (needs a chat template)."""
    reward_fn: str | None = None
    """Optional 'package.module:function' (completion, example) -> float | Verdict replacing the task's verifier."""
    reward_model: str | None = None
    """A reward model folder (`entrolab rm train`): its score is the reward; the task's verifier stays the gold
    (reward/accuracy, reward/gold_mean), logged next to the proxy (reward/proxy_mean, reward/spurious_rate)."""
    reward_mix: float = 1.0
    """With --reward-model: reward = mix * reward model + (1 - mix) * verifier score."""
    prm_model: str | None = None
    """An implicit process reward model (a causal LM folder, e.g. one `entrolab prefs` trained with DPO on
    right-over-wrong pairs): the prm_logp of implicit_prm, r_t = beta log pi_prm / pi_base. Kept frozen."""
    prm_lr: float = 0.0
    """PRIME's online update of --prm-model: AdamW learning rate of one step per training step on the step's
    rollouts, labels the verifier's outcome (PRIME: 1e-6); 0 keeps the PRM frozen."""
    prm_beta: float = 0.05
    """beta of the online PRM loss BCE(sigmoid(beta sum log pi_prm / pi_ref), right) (PRIME: 0.05)."""
    reference_responses: int = 1
    """Responses of the base policy per prompt whose rewards a method's ref_rewards need holds (PAR's M; the
    paper finds 1 enough), sampled once per prompt."""
    on_reward_error: OnRewardError = "raise"
    """What a raising, hanging (past --reward-timeout) or dying reward does: stop the run (raise) or drop the
    sample from the update and count it in reward/errors and reward/timeouts (skip)."""
    reward_workers: int | None = None
    """Worker processes that score completions (None: the number of cores)."""
    reward_timeout: float = 60.0
    """Seconds one sample's reward may take; past it the worker is killed and the sample reported."""
    out: str = "runs/run"
    """Run folder: config.json, metrics.jsonl, checkpoint-NNNNNN.pt (+ .sha256, the last two), summary.json, final/."""
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
    env: str | None = None
    """A multi-turn environment instead of a task: calc, lookup or grid (`entrolab tasks` lists them); the
    model acts over turns (tool calls, moves) and the environment's observations are never trained on."""
    max_turns: int | None = None
    """With env: model turns per episode (default: the environment's own)."""
    turn_tokens: int = 24
    """With env: the most tokens of one model turn (a turn ends at a newline or EOS)."""
    rollout: RolloutKind = "plain"
    """With env: plain (G independent episodes per prompt) or aepo (AEPO's entropy-balanced rollout: global
    samples and branches at high-entropy tool-call turns, the split set by an entropy probe)."""
    rollout_options: tuple[str, ...] = ()
    """rollout=aepo: its options as 'field=value' (entrolab.methods.aepo_rollout.AEPORolloutConfig: beta, alpha,
    gamma, penalty_coef, entropy_window, rule, ...)."""
    self_imitation: bool = False
    """SPEAR's self-imitation: replay past episodes with A > 0 and a tool call, advantages recalibrated against
    the median of past group-mean rewards, as an extra loss weighted by a cosine-rising gamma(k)."""
    self_imitation_options: tuple[str, ...] = ()
    """Its options as 'field=value' (entrolab.methods.spear_sil.SpearReplayConfig: capacity, replay_coef,
    max_replay_loss_steps, tolerate_steps, weight_decay_trajectory_replay, replay_mode, ...)."""
    progress_lr: float = 1e-3
    """SPA (advantage spa): learning rate of the progress estimator, a linear head on the policy's hidden states
    fitted online so each episode's step contributions sum to its reward."""
    episode_tokens: int | None = None
    """With env: the response budget of an episode, model turns and observations together (default: the
    environment's own, e.g. 128 for lookup); max_new_tokens is then unused."""
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
    samplers: Annotated[tuple[str, ...], arg(aliases=("--sampler",))] = ()
    """Which groups enter the update after rewards (dynamic_sampling draws more rollouts to refill the batch)."""
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
    reuse_sampling_pass: bool = True
    """The first minibatch of each step, which runs at the weights the batch was sampled at, takes each
    token's logsumexp and entropy from the sampling pass instead of the LM head's forward over the vocabulary
    (its backward is unchanged). Lean backend, single-turn rollouts, no rollout correction; values equal a full
    forward's up to fp32 rounding (the KV-cache pass against the teacher-forced one)."""
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
    max_nonfinite_steps: int = 3
    """A non-finite loss or gradient norm skips that optimizer step; after this many consecutive skipped steps
    the run checkpoints its last good state and stops with exit code 1."""

    # --- eval, logging, checkpoints --------------------------------------------------------------------------
    eval_every: int = 50
    """Evaluate on the test split every N steps (0: only at start and end)."""
    eval_samples: int = 16
    """Samples per test prompt for pass@k."""
    eval_prompts: int | None = None
    """Evaluate on the first N test prompts (None: all)."""
    entropy_probe: int = 16
    """Sequences of each step whose entropy is re-measured after the update (one no-grad pass), to log the
    observed entropy change on the same states next to the one Cov(log pi, A) predicts (0: off)."""
    base_kl: bool = False
    """Log kl/seq_to_base each step: the rollout's sequence-level KL(pi || base) estimate, sum_t (log pi -
    log pi_base) averaged over the sequences (a frozen copy of --model is loaded; the report's best-of-N section
    compares it with BoN's bound log N - (N-1)/N)."""
    save_every: int = 25
    """Write an atomic checkpoint every N steps (and on Ctrl-C / SIGTERM)."""
    progress: bool = True
    """Show a live progress bar."""
    log_to: tuple[str, ...] = ()
    """Extra metric sinks besides metrics.jsonl: tensorboard (RUN_DIR/tensorboard), mlflow (RUN_DIR/mlruns),
    wandb (RUN_DIR/wandb, offline unless WANDB_MODE says otherwise)."""

    @property
    def response_budget(self) -> int:
        """The most response tokens of a row: max_new_tokens, or an episode's budget with env."""
        if self.env is None:
            return self.max_new_tokens
        from entrolab.envs import ENV_BUDGETS

        return self.episode_tokens or ENV_BUDGETS[self.env]

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
        if self.reward_model is not None and self.reward_fn is not None:
            raise ValueError("reward_model and reward_fn both replace the verifier; choose one")
        if self.prm_model is not None and not (Path(self.prm_model) / "config.json").is_file():
            raise ValueError(f"prm model {self.prm_model!r} is not a Hugging Face model folder (no config.json)")
        if self.prm_lr < 0 or (self.prm_lr > 0 and self.prm_model is None):
            raise ValueError(f"prm_lr must be >= 0 and needs --prm-model, got {self.prm_lr} with {self.prm_model!r}")
        if not self.prm_beta > 0:
            raise ValueError(f"prm_beta must be > 0, got {self.prm_beta}")
        if self.reference_responses < 1:
            raise ValueError(f"reference_responses must be >= 1, got {self.reference_responses}")
        if not 0.0 <= self.reward_mix <= 1.0:
            raise ValueError(f"reward_mix must be in [0, 1], got {self.reward_mix}")
        if self.reward_model is not None and not (Path(self.reward_model) / "config.json").is_file():
            raise ValueError(f"reward model {self.reward_model!r} is not a folder `entrolab rm train` wrote")
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
        if self.reward_workers is not None and self.reward_workers < 1:
            raise ValueError(f"reward_workers must be >= 1 or None (the number of cores), got {self.reward_workers}")
        if not self.reward_timeout > 0:
            raise ValueError(f"reward_timeout must be > 0 seconds, got {self.reward_timeout}")
        if self.max_nonfinite_steps < 1:
            raise ValueError(f"max_nonfinite_steps must be >= 1, got {self.max_nonfinite_steps}")
        if self.entropy_probe < 0:
            raise ValueError(f"entropy_probe must be >= 0, got {self.entropy_probe}")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.lr_schedule not in get_args(LRSchedule):
            raise ValueError(f"lr_schedule must be one of {list(get_args(LRSchedule))}, got {self.lr_schedule!r}")
        if self.on_reward_error not in get_args(OnRewardError):
            raise ValueError(
                f"on_reward_error must be one of {list(get_args(OnRewardError))}, got {self.on_reward_error!r}"
            )
        from entrolab.envs import ENVS

        if self.env is not None:
            if self.env not in ENVS:
                raise ValueError(f"unknown env {self.env!r}; built-in envs: {list(ENVS)}")
            if self.reward_fn or self.reward_model:
                raise ValueError("an env scores its own episodes: --reward-fn and --reward-model do not apply")
        if self.rollout not in get_args(RolloutKind):
            raise ValueError(f"rollout must be one of {list(get_args(RolloutKind))}, got {self.rollout!r}")
        for name in ("max_turns", "episode_tokens"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {getattr(self, name)}")
        if self.turn_tokens < 1:
            raise ValueError(f"turn_tokens must be >= 1, got {self.turn_tokens}")
        from entrolab.tasks import TASKS

        if self.task not in TASKS and not self.task.startswith("rg:"):
            raise ValueError(f"unknown task {self.task!r}; known: {', '.join(TASKS)}, rg:<reasoning-gym dataset>")
        if self.chat_template not in CHAT_TEMPLATE_MODES:
            raise ValueError(f"chat_template must be one of {list(CHAT_TEMPLATE_MODES)}, got {self.chat_template!r}")
        if self.test_fraction is not None and not 0 < self.test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        bad_sinks = sorted(set(self.log_to) - {"tensorboard", "mlflow", "wandb"})
        if bad_sinks:
            raise ValueError(f"unknown log_to sink(s) {bad_sinks}; allowed: tensorboard, mlflow, wandb")
        if self.task in ("jsonl", "math") and not self.task_path:
            raise ValueError(f"task={self.task} needs --task-path FILE (.jsonl, .json, .parquet, .csv or a folder)")
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; known: {', '.join(sorted(PRESETS))}")
        self.method_options()  # validates names, option keys and values

    def selected(self) -> list[tuple[str, str]]:
        """(axis, name) of every method this run uses."""
        return selected_methods(self)

    def method_options(self) -> dict[str, dict[str, Any]]:
        """The parsed ``options`` per method name; raises on an unknown method, field or bad value."""
        return parse_method_options(self.selected(), self.options)

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


@dataclass(frozen=True)
class TrainCommand:
    """RL post-training with a preset or a choice per axis (precedence: defaults < --preset < --config < flags)."""

    cfg: Annotated[TrainConfig, arg(name="")]
    resume: str | None = None
    """Continue the run in this folder from its latest valid checkpoint (only --steps, --progress and --threads
    may change)."""
    config: str | None = None
    """A run TOML: top-level keys are the flags' names with underscores; [options.METHOD] tables set options."""
    overwrite: bool = False
    """Replace the run already in --out (without it, a folder that holds a run is refused)."""


def selected_methods(choice: Any) -> list[tuple[str, str]]:
    """(axis, name) of every method an object with the ``AXIS_FIELDS`` attributes chooses."""
    out = []
    for axis, name in AXIS_FIELDS.items():
        value = getattr(choice, name)
        out += [(axis, value)] if isinstance(value, str) else [(axis, n) for n in value]
    return out


def parse_method_options(selected: list[tuple[str, str]], options: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """``'method.field=value'`` strings -> the options per selected method name (last one wins); raises one line
    on an unknown method, a method the run does not use, an unknown field or an invalid value."""
    chosen = {name: catalogue.get(axis, name) for axis, name in selected}
    out: dict[str, dict[str, Any]] = {name: {} for name in chosen}
    for item in options:
        key, eq, raw = item.partition("=")
        method, dot, fld = key.strip().rpartition(".")
        if not eq or not dot:
            raise ValueError(f"option {item!r} must look like 'method.field=value'")
        if method not in chosen:
            raise ValueError(f"option {item!r} names method {method!r}, which this run does not use: {sorted(chosen)}")
        out[method][fld] = _parse_value(raw.strip())
    for name, opts in out.items():
        chosen[name].make_config(opts)  # unknown keys and invalid values raise here
    return out


def _parse_value(raw: str) -> Any:
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw  # a bare word such as k3 or batch


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


__all__ = [
    "PRESETS",
    "TrainCommand",
    "TrainConfig",
    "base_config",
    "load_toml",
    "parse_method_options",
    "save_json",
    "selected_methods",
]
