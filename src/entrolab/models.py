"""Tiny local causal LMs with a character-level tokenizer, and one loader for any local HF causal-LM folder.

Nothing here touches the network: the tokenizer is built with the ``tokenizers`` library from a fixed
character set, the model from a ``LlamaConfig``. ``load_policy(path)`` accepts that tiny model or any local
Hugging Face causal-LM directory (a Qwen or Llama checkpoint on a GPU works the same way).

Why Llama and not Qwen2: with transformers 5.x, ``AutoTokenizer`` maps ``model_type: qwen2`` to a ByteLevel
BPE class that silently drops spaces and newlines from a custom character vocabulary.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from entrolab.tasks import ALPHABET

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
SizePreset = Literal["tiny1m", "tiny10m"]


@dataclass(frozen=True)
class ModelSize:
    """Transformer shape of a size preset."""

    hidden: int
    layers: int
    heads: int
    max_positions: int = 512


SIZES: dict[str, ModelSize] = {
    "tiny1m": ModelSize(hidden=128, layers=4, heads=4),  # about 1.0M parameters with the 100-char vocab
    "tiny10m": ModelSize(hidden=320, layers=6, heads=5),  # about 9.8M parameters
}


class ModelLoadError(ValueError):
    """A model path that is missing or is not a loadable Hugging Face causal-LM folder."""


def build_tokenizer():  # -> transformers.PreTrainedTokenizerFast
    """A character-level tokenizer: one token per character of ``ALPHABET``, plus pad/bos/eos/unk.

    Encoding prepends ``<bos>``; decoding fuses characters without inserted spaces, so
    ``decode(encode(text))`` returns ``text`` exactly for any text over ``ALPHABET``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(list(SPECIALS) + list(ALPHABET))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")  # one token per character
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(list(SPECIALS))
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="left",
    )


def build_byte_tokenizer(texts: Iterable[str] | None = None, vocab_size: int | None = None):
    """A byte-level tokenizer, so any UTF-8 text encodes: the 256 bytes plus pad/bos/eos/unk, and, given
    ``texts`` and ``vocab_size``, BPE merges trained on those texts up to ``vocab_size`` entries.

    Encoding prepends ``<bos>``; ``decode(encode(text))`` returns ``text`` exactly for any string.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    if texts is not None and vocab_size is not None and vocab_size > len(alphabet) + len(SPECIALS):
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=list(SPECIALS), initial_alphabet=alphabet, show_progress=False
        )
        tok.train_from_iterator(texts, trainer=trainer)
    else:
        vocab = {t: i for i, t in enumerate([*SPECIALS, *sorted(alphabet)])}
        tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens(list(SPECIALS))
    bos = tok.token_to_id("<bos>")
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="left",
    )


def tiny_llama_config(tokenizer, size: SizePreset = "tiny1m", **extra):  # -> transformers.LlamaConfig
    """The Llama config of a size preset over ``tokenizer``'s vocabulary (``extra``: more config fields)."""
    from transformers import LlamaConfig

    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; allowed: {sorted(SIZES)}")
    s = SIZES[size]
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=s.hidden,
        intermediate_size=4 * s.hidden,
        num_hidden_layers=s.layers,
        num_attention_heads=s.heads,
        num_key_value_heads=s.heads,
        head_dim=s.hidden // s.heads,
        max_position_embeddings=s.max_positions,
        **extra,
    )


def build_tiny_model(tokenizer, size: SizePreset = "tiny1m", seed: int = 0):  # -> LlamaForCausalLM
    """A freshly initialised Llama-architecture causal LM of the given size preset, in fp32."""
    from transformers import LlamaForCausalLM

    cfg = tiny_llama_config(
        tokenizer,
        size,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    for k in ("pad_token_id", "eos_token_id", "bos_token_id"):
        setattr(model.generation_config, k, getattr(tokenizer, k))
    return model


def save_policy(model, tokenizer, out: str | Path) -> Path:
    """``save_pretrained`` model and tokenizer into ``out`` (a normal HF model folder)."""
    import transformers

    transformers.logging.disable_progress_bar()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def load_policy(path: str | Path, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """Load (model, tokenizer) from a local HF causal-LM folder with clear errors for a bad path.

    The tokenizer pads on the left; a tokenizer without a pad token gets its eos token as pad.
    """
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = Path(path)
    if not p.exists():
        raise ModelLoadError(f"model path {str(path)!r} does not exist (expected a local HF model folder)")
    if not p.is_dir():
        raise ModelLoadError(f"model path {str(path)!r} is a file, expected a folder with config.json")
    cfg_file = p / "config.json"
    if not cfg_file.is_file():
        raise ModelLoadError(
            f"model path {str(path)!r} has no config.json; is it a Hugging Face model folder? "
            f"(make one with `entrolab pretrain --out {path}`)"
        )
    try:
        json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{cfg_file} is not valid JSON: {e}") from e
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(p, padding_side="left")
        model = AutoModelForCausalLM.from_pretrained(p, dtype=dtype)
    except Exception as e:  # transformers raises many types (OSError, ValueError, KeyError, safetensors)
        raise ModelLoadError(f"cannot load a causal LM from {str(path)!r}: {type(e).__name__}: {e}") from e
    finally:
        transformers.logging.set_verbosity(verbosity)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.eos_token_id is None:
        raise ModelLoadError(f"tokenizer at {str(path)!r} has no eos token; generation could never stop")
    return model.to(device), tokenizer


def num_parameters(model) -> int:
    """Number of distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())
