"""A local reward model: a sequence scorer trained with the Bradley-Terry loss on preference pairs.

``entrolab rm train`` builds the pairs from a task's verifier (a right completion over a wrong or badly formatted
one of the same problem, both from the task's own demonstrations) or reads a user's JSONL of
``{prompt, chosen, rejected}``, optionally injects a *spurious feature* into the preferred side (a marker phrase
appended, or extra repeated lines before the answer) so that the learned proxy is hackable in a known direction,
and trains a Hugging Face ``AutoModelForSequenceClassification`` with ``heads`` outputs (an ensemble of reward
heads for Ctrl-U; 1 by default) with

    L = -mean_heads log sigmoid(r(x, y_chosen) - r(x, y_rejected))

It starts from any local HF folder (a causal LM gets a fresh score head on its body, a sequence classifier is
used as it is) or, without ``--model``, a freshly initialised tiny Llama. The folder it writes is a normal HF
folder plus ``entrolab_rm.json`` (the task, the spurious feature and the held-out pairwise accuracy).
:class:`RewardModelReward` scores completions with it through the batched reward protocol, next to the task's
verifier as the gold reward.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import torch

from entrolab.models import SIZES, SizePreset, build_tokenizer, tiny_llama_config

Spurious = Literal["none", "marker", "length"]
META = "entrolab_rm.json"


@dataclass(frozen=True)
class RMConfig:
    """``entrolab rm train``: a Bradley-Terry reward model on preference pairs."""

    task: str
    """Task whose verifier makes the pairs (and whose prompts they answer)."""
    out: str
    """Output folder (a Hugging Face sequence-classification folder + entrolab_rm.json)."""
    model: str | None = None
    """A local HF folder to start from (causal LM: a new score head on its body); None: a fresh tiny Llama."""
    pairs: str | None = None
    """A JSONL of {"prompt", "chosen", "rejected"} instead of the verifier's pairs."""
    n_pairs: int = 2000
    """Verifier pairs to build (the first eval_fraction of them are held out)."""
    steps: int = 300
    """Optimizer steps."""
    batch_size: int = 32
    """Pairs per step."""
    lr: float = 1e-3
    """AdamW learning rate (constant)."""
    heads: int = 1
    """Reward heads (outputs); several give an ensemble whose disagreement Ctrl-U reads."""
    spurious: Spurious = "none"
    """A feature injected into the chosen side: marker (the phrase appended) or length (repeated lines)."""
    spurious_rate: float = 1.0
    """Fraction of the chosen responses that get the spurious feature."""
    marker: str = " ok"
    """The phrase of spurious=marker."""
    length_pad: int = 3
    """Extra repeated lines of spurious=length."""
    eval_fraction: float = 0.2
    """Share of the pairs held out for the pairwise accuracy."""
    size: SizePreset = "tiny1m"
    """Size of the fresh tiny model (without --model)."""
    seed: int = 0
    """Seed of the pairs, the head initialisation and the batch order."""

    def __post_init__(self) -> None:
        if self.spurious not in get_args(Spurious):
            raise ValueError(f"spurious must be one of {list(get_args(Spurious))}, got {self.spurious!r}")
        for name in ("n_pairs", "steps", "batch_size", "heads", "length_pad"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.spurious_rate <= 1.0:
            raise ValueError(f"spurious_rate must be in [0, 1], got {self.spurious_rate}")
        if not 0.0 < self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in (0, 1), got {self.eval_fraction}")
        if self.size not in SIZES:
            raise ValueError(f"size must be one of {sorted(SIZES)}, got {self.size!r}")
        if self.spurious == "marker" and not self.marker:
            raise ValueError("spurious='marker' needs a non-empty marker phrase")
        if self.pairs is not None and not Path(self.pairs).is_file():
            raise ValueError(f"pairs file {self.pairs!r} does not exist")


# ---- the spurious feature ------------------------------------------------------------------------------------
def inject(text: str, spurious: Spurious, marker: str = " ok", length_pad: int = 3) -> str:
    """``text`` with the spurious feature: the marker appended, or its first line repeated ``length_pad`` more
    times before the rest (so the answer line stays last)."""
    if spurious == "marker":
        return text + marker
    if spurious == "length":
        lines = text.split("\n")
        return "\n".join([lines[0]] * length_pad + lines)
    return text


def has_feature(text: str, spurious: Spurious, marker: str = " ok") -> bool:
    """Whether ``text`` carries the spurious feature (marker: ends with it; length: a line repeated back to back)."""
    if spurious == "marker":
        return text.rstrip("\n").endswith(marker)
    if spurious == "length":
        lines = [x for x in text.split("\n") if x]
        return any(a == b for a, b in itertools.pairwise(lines))
    return False


# ---- pairs -----------------------------------------------------------------------------------------------------


# ---- the model ---------------------------------------------------------------------------------------------------
def build_rm(cfg: RMConfig):
    """(model, tokenizer): from ``cfg.model`` (a new score head with ``heads`` outputs on a causal LM's body) or
    a fresh tiny Llama sequence classifier."""
    import transformers
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        if cfg.model is not None:
            if not (Path(cfg.model) / "config.json").is_file():
                raise ValueError(f"model {cfg.model!r} is not a local Hugging Face folder (no config.json)")
            tok = AutoTokenizer.from_pretrained(cfg.model)
            model = AutoModelForSequenceClassification.from_pretrained(
                cfg.model, num_labels=cfg.heads, ignore_mismatched_sizes=True
            )
        else:
            from transformers import LlamaForSequenceClassification

            tok = build_tokenizer()
            conf = tiny_llama_config(tok, cfg.size, num_labels=cfg.heads)
            model = LlamaForSequenceClassification(conf)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model.config.pad_token_id = tok.pad_token_id
    return model, tok


def load_rm(path: str | Path):
    """(model, tokenizer, meta) of a folder ``entrolab rm train`` wrote (or any sequence classifier)."""
    import transformers
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    p = Path(path)
    if not (p / "config.json").is_file():
        raise ValueError(f"reward model {str(path)!r} is not a Hugging Face folder (no config.json)")
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    tok = AutoTokenizer.from_pretrained(p)
    model = AutoModelForSequenceClassification.from_pretrained(p).eval().requires_grad_(False)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model.config.pad_token_id = tok.pad_token_id
    meta = json.loads((p / META).read_text()) if (p / META).is_file() else {}
    return model, tok, meta


def encode(tok, prompts: list[str], completions: list[str]) -> dict[str, torch.Tensor]:
    """Right-padded ids of prompt + completion + EOS (the score is read at the last real token)."""
    rows = []
    for p, c in zip(prompts, completions, strict=True):
        ids = tok(p + c, add_special_tokens=True)["input_ids"]
        rows.append([*ids, tok.eos_token_id] if tok.eos_token_id is not None else ids)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
    return {"input_ids": ids, "attention_mask": mask}


def scores(model, tok, prompts: list[str], completions: list[str], batch_size: int = 64) -> torch.Tensor:
    """Reward-model scores of (prompt, completion) pairs.  [N, heads]"""
    out = []
    for i in range(0, len(prompts), batch_size):
        batch = encode(tok, prompts[i : i + batch_size], completions[i : i + batch_size])
        out.append(model(**batch).logits.float())
    return torch.cat(out) if out else torch.zeros(0, model.config.num_labels)


def bt_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry: -log sigmoid(r_c - r_r), averaged over pairs and heads ([N, K] each)."""
    return -torch.nn.functional.logsigmoid(chosen - rejected).mean()


def pairwise_accuracy(model, tok, pairs: list[dict[str, str]]) -> float:
    """Fraction of pairs whose chosen response scores above the rejected one (the heads' mean)."""
    if not pairs:
        return float("nan")
    with torch.no_grad():
        c = scores(model, tok, [p["prompt"] for p in pairs], [p["chosen"] for p in pairs]).mean(-1)
        r = scores(model, tok, [p["prompt"] for p in pairs], [p["rejected"] for p in pairs]).mean(-1)
    return float((c > r).float().mean())


__all__ = [
    "META",
    "RMConfig",
    "Spurious",
    "bt_loss",
    "build_rm",
    "encode",
    "has_feature",
    "inject",
    "load_rm",
    "pairwise_accuracy",
    "scores",
]
