from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory):
    """A freshly initialised tiny model saved as a HF folder (random weights, shared by the session)."""
    from entrolab.models import build_tiny_model, build_tokenizer, save_policy

    out = tmp_path_factory.mktemp("tiny")
    tok = build_tokenizer()
    save_policy(build_tiny_model(tok, "tiny1m", seed=0), tok, out)
    return out


@pytest.fixture()
def tiny(tiny_dir):
    """(model, tokenizer) loaded from ``tiny_dir``: a fresh copy per test."""
    from entrolab.models import load_policy

    return load_policy(tiny_dir)


@pytest.fixture(scope="session")
def rm_dir(tmp_path_factory):
    """A tiny two-head reward model (`entrolab rm train`, a few steps on arithmetic pairs) for the methods that
    read a reward model's heads or its proxy/gold parts."""
    from entrolab.reward_model import RMConfig
    from entrolab.rm_train import train_rm

    out = tmp_path_factory.mktemp("rm_heads")
    train_rm(RMConfig(task="arithmetic", out=str(out), n_pairs=24, steps=2, batch_size=8, heads=2), log=lambda *a: None)
    return out
