"""Any text through the tiny model (byte-level and BPE tokenizers), chat templates, and the file tasks through
the real CLI (pretrain, eval, train on the shipped GSM8K-format file and its Parquet copy)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from entrolab.chat import with_chat_template
from entrolab.models import build_byte_tokenizer, build_tokenizer
from entrolab.pretrain import PretrainConfig, make_tokenizer, task_texts
from entrolab.tasks import Example, make_task

ROOT = Path(__file__).resolve().parents[1]
GSM = ROOT / "examples" / "data" / "gsm8k_tiny.jsonl"
TEXT = "Größe 3+4=7, ∑ 日本語 🙂\nanswer: ½"


def test_byte_tokenizer_round_trips_any_utf8():
    tok = build_byte_tokenizer()
    ids = tok(TEXT)["input_ids"]
    assert ids[0] == tok.bos_token_id and tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == TEXT
    assert len(tok) == 260  # 256 bytes + pad, bos, eos, unk


def test_bpe_tokenizer_is_trained_on_the_task_text_and_is_shorter():
    task = make_task("arithmetic", seed=0)
    texts = task_texts(task, 500)
    bpe = build_byte_tokenizer(texts, 400)
    plain = build_byte_tokenizer()
    sample = max(texts, key=len)
    assert 260 < len(bpe) <= 400
    assert len(bpe(sample)["input_ids"]) < len(plain(sample)["input_ids"])
    assert bpe.decode(bpe(TEXT)["input_ids"], skip_special_tokens=True) == TEXT  # still any text


def test_pretrain_tokenizer_choice(tmp_path):
    arith = make_task("arithmetic", seed=0)
    assert len(make_tokenizer(arith, PretrainConfig())) == len(build_tokenizer())  # auto: the built-in alphabet
    p = tmp_path / "u.jsonl"
    p.write_text("".join(json.dumps({"prompt": f"Größe {i}?", "answer": str(i)}) + "\n" for i in range(20)))
    utf = make_task("math", path=str(p))
    assert len(make_tokenizer(utf, PretrainConfig())) == 260  # auto: bytes, the text is outside the alphabet
    with pytest.raises(ValueError, match="outside the character tokenizer's alphabet"):
        make_tokenizer(utf, PretrainConfig(tokenizer="char"))
    with pytest.raises(ValueError, match="tokenizer must be one of"):
        PretrainConfig(tokenizer="words")


TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def test_chat_template_renders_prompts_when_the_tokenizer_has_one():
    task = make_task("arithmetic", seed=0)
    ex = task.test[0]
    tok = build_byte_tokenizer()
    assert with_chat_template(task, tok, "auto") is task  # no template: plain prompts
    tok.chat_template = TEMPLATE
    chat = with_chat_template(task, tok, "auto", system_prompt="Be brief.")
    assert chat.prompt(ex) == f"<|system|>Be brief.<|end|><|user|>{task.prompt(ex)}<|end|><|assistant|>"
    assert chat.verify(f"answer: {ex.answer}", ex).reason == "right" and chat.test == task.test
    assert with_chat_template(task, tok, "none") is task
    tok.chat_template = "{{ raise_exception('no system role') if messages[0]['role'] == 'system' }}"
    with pytest.raises(ValueError, match=r"chat template failed to render a prompt of .*no system role"):
        with_chat_template(task, tok, "auto", system_prompt="x")
    with pytest.raises(ValueError, match="--system-prompt needs a tokenizer with a chat template"):
        with_chat_template(task, build_byte_tokenizer(), "auto", system_prompt="x")


def test_chat_prompts_do_not_double_the_bos_token():
    tok = build_byte_tokenizer()
    tok.chat_template = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    task = make_task("arithmetic", seed=0)
    text = with_chat_template(task, tok, "auto").prompt(task.test[0])
    assert not text.startswith("<bos>") and tok(text)["input_ids"].count(tok.bos_token_id) == 1


def test_demonstrations_of_the_math_task_show_the_worked_steps():
    pytest.importorskip("math_verify")
    task = make_task("math", path=str(GSM))
    ex = task.train[0]
    kinds = {task.verify(task.demonstration(ex, random.Random(i)), ex).reason for i in range(40)}
    assert kinds == {"right", "wrong", "format_error"}
    assert task.demonstration(ex, random.Random(1)).split("\n")[0] in dict(ex.data)["solution"]


def test_file_tasks_through_the_cli(tmp_path):
    """pretrain on the GSM8K-format file, eval with math-verify, train on the Parquet copy: the real CLI."""
    pytest.importorskip("math_verify")
    pytest.importorskip("datasets")
    from entrolab.cli import main

    base = tmp_path / "base"
    flags = ["--task", "math", "--task-path", str(GSM)]
    assert main(["pretrain", *flags, "--out", str(base), "--steps", "20", "--eval-samples", "0"]) == 0
    assert main(["eval", "--model", str(base), *flags, "--samples", "2", "--limit", "4", "--json"]) == 0
    run = tmp_path / "run"
    parquet = ["--task", "math", "--task-path", str(GSM.with_suffix(".parquet"))]
    argv = ["train", "--model", str(base), *parquet, "--steps", "2", "--prompts-per-step", "2", "--group-size", "2"]
    argv += ["--eval-prompts", "2", "--eval-samples", "2", "--out", str(run), "--no-progress"]
    assert main(argv) == 0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2] and "reward/accuracy" in rows[1]
    saved = json.loads((run / "config.json").read_text())
    assert saved["task"] == "math" and saved["task_path"].endswith(".parquet")


def test_task_flags_fail_clearly():
    from entrolab.data import build_task

    with pytest.raises(ValueError, match="--prompt-field applies to the file tasks"):
        build_task("arithmetic", 0, prompt_field="q")
    with pytest.raises(ValueError, match="--task-path applies to the file tasks"):
        build_task("countdown", 0, task_path="x.jsonl")
    with pytest.raises(ValueError, match=r"task option 'n_numbers' must look like 'key=value'"):
        build_task("countdown", 0, task_options=("n_numbers",))
    task = build_task("countdown", 0, task_options=("n_numbers=4",))
    assert task.config.n_numbers == 4
    assert isinstance(Example("a", "b", "c").get, object)
