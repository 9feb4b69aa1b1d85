from __future__ import annotations

import pytest
import torch

from entrolab.models import (
    ModelLoadError,
    build_tiny_model,
    build_tokenizer,
    load_policy,
    num_parameters,
    save_policy,
)
from entrolab.tasks import ALPHABET as CHARSET


def test_tokenizer_round_trip_keeps_spaces_and_newlines(tiny_dir):
    _, tok = load_policy(tiny_dir)
    text = "use 3 7 8 to make 29\n7*3=21\n21+8=29\nanswer: 7*3+8 {}~"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id  # bos prepended
    assert len(ids) == len(text) + 1  # one token per character
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.decode(tok(CHARSET)["input_ids"], skip_special_tokens=True) == CHARSET


def test_tokenizer_pads_left_after_reload(tiny_dir):
    _, tok = load_policy(tiny_dir)
    enc = tok(["ab", "abcd"], padding=True, return_tensors="pt")
    assert enc["input_ids"][0, :2].tolist() == [tok.pad_token_id] * 2
    assert enc["attention_mask"].tolist() == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]


@pytest.mark.parametrize(("size", "low", "high"), [("tiny1m", 0.9e6, 1.2e6), ("tiny10m", 9e6, 11e6)])
def test_size_presets(size, low, high):
    tok = build_tokenizer()
    assert low < num_parameters(build_tiny_model(tok, size)) < high


def test_save_and_reload_gives_identical_weights(tmp_path):
    tok = build_tokenizer()
    model = build_tiny_model(tok, "tiny1m", seed=3)
    save_policy(model, tok, tmp_path)
    loaded, _ = load_policy(tmp_path)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    ids = torch.tensor([tok("1+2=?\n")["input_ids"]])
    assert torch.allclose(model(ids).logits, loaded(ids).logits, atol=1e-6)


def test_build_is_seeded():
    tok = build_tokenizer()
    a, b, c = (build_tiny_model(tok, "tiny1m", seed=s) for s in (1, 1, 2))
    assert torch.equal(a.model.embed_tokens.weight, b.model.embed_tokens.weight)
    assert not torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight)


def test_bad_model_paths_are_clear_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_policy(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ModelLoadError, match="is a file"):
        load_policy(tmp_path / "file")
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        load_policy(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        load_policy(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ModelLoadError, match="cannot load a causal LM"):
        load_policy(tmp_path)


def test_unknown_size_is_rejected():
    with pytest.raises(ValueError, match="allowed"):
        build_tiny_model(build_tokenizer(), "huge")  # type: ignore[arg-type]
