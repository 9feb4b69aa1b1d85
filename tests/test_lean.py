"""``entrolab.lean`` computes the same function as the model's own (Hugging Face) forward.

Tiny Llama-family models built from configs here (hidden 32, 2 layers), with weights drawn wider than the
default initialisation and random norm weights and attention biases, so that attention patterns and logits are
far from uniform and every parameter matters. The teacher-forced pass, the decoding steps and whole rollouts
are checked against the HF forward: to ~1e-10 in float64 and 1e-5 in float32.

transformers' RMSNorm normalises in float32 even in a float64 model (the lean forward normalises float64 in
float64), which alone makes the two float64 forwards differ by ~1e-6. The models here normalise float64 in
float64 (float32 arithmetic unchanged), so that float64 comparisons can be tight.
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable

import pytest
import torch

from entrolab.config import TrainConfig
from entrolab.lean import KVCache, LeanDecoder
from entrolab.models import build_tokenizer
from entrolab.rollout import _LeanEngine, encode_prompts, generate, teacher_forced

TOK = build_tokenizer()
VOCAB = len(TOK)
PAD, EOS = TOK.pad_token_id, TOK.eos_token_id
PROMPTS = ["3+4=?\n", "12-7+1=?\n", "use 1 2 3 to make 6\n"]  # three lengths: left padding differs per row
ROWS = (0, 0, 0, 1, 2, 2)  # duplicate prompts as in groups, and distinct ones
LENGTHS = (5, 1, 7, 3, 7, 2)  # response lengths: right padding differs per row, one response of 1 token
ARCHS = ("llama", "llama_gqa", "qwen2", "untied", "mistral")
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def build(arch: str, seed: int = 0):
    """A tiny causal LM of ``arch`` with non-trivial weights: std 0.2, random RMSNorm weights and biases."""
    import transformers

    shape = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2 if arch == "llama_gqa" else 4,
        head_dim=8,
        max_position_embeddings=128,
        initializer_range=0.2,
        tie_word_embeddings=arch != "untied",
        bos_token_id=TOK.bos_token_id,
        eos_token_id=EOS,
        pad_token_id=PAD,
    )
    if arch == "qwen2":
        cfg, cls = transformers.Qwen2Config(**shape, use_sliding_window=False), transformers.Qwen2ForCausalLM
    elif arch == "mistral":
        cfg, cls = transformers.MistralConfig(**shape, sliding_window=None), transformers.MistralForCausalLM
    else:
        cfg, cls = transformers.LlamaConfig(**shape), transformers.LlamaForCausalLM
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = cls(cfg)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("norm.weight"):
                    p.uniform_(0.5, 1.5)
                elif name.endswith(".bias"):
                    p.normal_(0.0, 0.5)
    model.eval()  # no dropout; the lean forward never has any
    for mod in model.modules():
        if type(mod).__name__.endswith("RMSNorm"):
            mod.forward = types.MethodType(_rms_in_input_precision, mod)
    return model


def _rms_in_input_precision(self, x: torch.Tensor) -> torch.Tensor:
    """transformers' RMSNorm, except that it normalises float64 inputs in float64 (transformers casts them to
    float32, the lean forward does not). Identical arithmetic for float32 and below."""
    h = x.to(torch.promote_types(x.dtype, torch.float32))
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
    return self.weight * h.to(x.dtype)


def responses(
    rows: tuple[int, ...] = ROWS, lengths: tuple[int, ...] = LENGTHS, seed: int = 0
) -> tuple[torch.Tensor, ...]:
    """Left-padded prompts (rows of ``PROMPTS``) and random right-padded responses of the given lengths."""
    ids, mask = encode_prompts(TOK, PROMPTS)
    idx = torch.tensor(rows)
    t = max(lengths)
    g = torch.Generator().manual_seed(seed)
    rid = torch.randint(4, VOCAB, (len(rows), t), generator=g)  # ordinary characters, no special tokens
    rmask = (torch.arange(t)[None] < torch.tensor(lengths)[:, None]).float()
    return ids[idx], mask[idx], rid.masked_fill(rmask == 0, PAD), rmask


def pad_more(pid, pmask, rid, rmask, left: int, right: int) -> tuple[torch.Tensor, ...]:
    """The same batch with ``left`` more padding columns before the prompts and ``right`` after the responses."""

    def cat(x: torch.Tensor, value: float, n: int, before: bool) -> torch.Tensor:
        fill = x.new_full((x.shape[0], n), value)
        return torch.cat([fill, x] if before else [x, fill], 1)

    return (
        cat(pid, PAD, left, True),
        cat(pmask, 0, left, True),
        cat(rid, PAD, right, False),
        cat(rmask, 0, right, False),
    )


def values_and_grads(model, batch, backend: str) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """logp, entropy and the gradient of every parameter of (logp*m).sum() + 0.3 (entropy*m).sum()."""
    model.zero_grad(set_to_none=True)
    logp, ent, _ = teacher_forced(model, *batch, temperature=0.8, backend=backend)
    m = batch[3].to(logp.dtype)
    ((logp * m).sum() + 0.3 * (ent * m).sum()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logp.detach(), ent.detach(), grads


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


# ------------------------------------------------------------------------------ teacher forcing: exactness


@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "separate"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("arch", ARCHS)
def test_teacher_forced_values_and_every_gradient_equal_the_hf_forward(arch, dtype, fuse, monkeypatch):
    # fused: q/k/v and gate/up concatenated with the norms folded in (small models); separate: as for big ones
    monkeypatch.setattr("entrolab.lean.FUSE_MAX_PARAMS", 10**12 if fuse else 0)
    model = build(arch).to(dtype)
    assert LeanDecoder.of(model) is not None
    if arch == "llama_gqa":
        assert LeanDecoder.of(model).kv_heads == 2 < LeanDecoder.of(model).heads == 4
    batch = responses()
    m = batch[3].bool()
    lp_h, ent_h, g_h = values_and_grads(model, batch, "hf")
    lp_l, ent_l, g_l = values_and_grads(model, batch, "lean")
    tol = TOL[dtype]
    assert lp_l.dtype == dtype and ent_l.dtype == dtype
    assert max_diff(lp_l[m], lp_h[m]) < tol
    assert max_diff(ent_l[m], ent_h[m]) < tol
    # the signal is far from trivial: entropies well below log V, log-probs spread out
    assert ent_h[m].max() < math.log(VOCAB) - 0.3 and lp_h[m].std() > 0.3
    # masked positions hold exact zeros in the lean path
    assert torch.all(lp_l[~m] == 0) and torch.all(ent_l[~m] == 0)
    names = [n for n, _ in model.named_parameters()]
    assert sorted(g_h) == sorted(g_l) == sorted(names)  # every parameter gets a gradient from both
    for n in names:
        scale = max(1.0, float(g_h[n].abs().max()))
        assert float(g_h[n].abs().max()) > 0, n
        assert max_diff(g_l[n], g_h[n]) < tol * scale, (n, max_diff(g_l[n], g_h[n]))
    if arch == "qwen2":
        assert all(float(g_l[n].abs().max()) > 0 for n in names if n.endswith("_proj.bias"))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_return_logits_equal_the_hf_logits_on_real_positions(arch, dtype):
    model = build(arch).to(dtype)
    batch = responses()
    m = batch[3].bool()
    with torch.no_grad():
        lp_h, ent_h, z_h = teacher_forced(model, *batch, temperature=0.7, return_logits=True, backend="hf")
        lp_l, ent_l, z_l = teacher_forced(model, *batch, temperature=0.7, return_logits=True, backend="lean")
        lp_c, ent_c, _ = teacher_forced(model, *batch, temperature=0.7, backend="lean")  # the chunked head
    tol = TOL[dtype]
    assert z_l.shape == z_h.shape == (*batch[2].shape, VOCAB)
    assert max_diff(z_l[m], z_h[m]) < tol
    assert torch.all(z_l[~m] == 0)  # masked positions: zero logits
    assert max_diff(lp_l[m], lp_h[m]) < tol and max_diff(ent_l[m], ent_h[m]) < tol
    assert max_diff(lp_l[m], lp_c[m]) < tol and max_diff(ent_l[m], ent_c[m]) < tol


def test_padding_does_not_change_the_lean_values():
    """Extra left padding on the prompts and extra right padding on the responses change nothing."""
    model = build("llama").double()
    batch = responses()
    wide = pad_more(*batch, left=3, right=4)
    t = batch[2].shape[1]
    with torch.no_grad():
        lp, ent, _ = teacher_forced(model, *batch, backend="lean")
        lp_w, ent_w, _ = teacher_forced(model, *wide, backend="lean")
    assert lp_w.shape == (len(ROWS), t + 4)
    assert max_diff(lp_w[:, :t], lp) < 1e-12 and max_diff(ent_w[:, :t], ent) < 1e-12
    assert torch.all(lp_w[:, t:] == 0) and torch.all(ent_w[:, t:] == 0)


@pytest.mark.parametrize("width", [1, 3])
def test_responses_of_one_token_each_match_hf(width):
    """No response token is run (each one's predictor is its prompt's last state); values and gradients."""
    model = build("llama_gqa").double()
    pid, pmask, rid, rmask = responses(lengths=(1,) * len(ROWS))
    batch = pad_more(pid, pmask, rid, rmask, left=0, right=width - 1)
    m = batch[3].bool()
    lp_h, ent_h, g_h = values_and_grads(model, batch, "hf")
    lp_l, ent_l, g_l = values_and_grads(model, batch, "lean")
    assert lp_l.shape == (len(ROWS), width) and int(m.sum()) == len(ROWS)
    assert max_diff(lp_l[m], lp_h[m]) < 1e-10 and max_diff(ent_l[m], ent_h[m]) < 1e-10
    assert torch.all(lp_l[~m] == 0) and torch.all(ent_l[~m] == 0)
    assert sorted(g_l) == sorted(g_h)
    for n, g in g_h.items():
        assert max_diff(g_l[n], g) < 1e-10 * max(1.0, float(g.abs().max())), n


# ------------------------------------------------------------------------------------------ decoding steps


def hf_last_logits(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The HF model's full forward over left-padded ``ids``: logits at the last position.  [n, V]"""
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits[:, -1]


def decode_head_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """The decode LM head's W x^T path (``LeanDecoder.decode_logits``) for the tiny models' heads too."""
    monkeypatch.setattr("entrolab.lean.DECODE_MM_MIN_HEAD", 0)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "separate"])
@pytest.mark.parametrize("head", ["linear", "decode_mm"])
@torch.no_grad()
def test_decoding_steps_equal_the_full_forward_also_after_rows_leave_the_cache(arch, fuse, head, monkeypatch):
    monkeypatch.setattr("entrolab.lean.FUSE_MAX_PARAMS", 10**12 if fuse else 0)
    if head == "decode_mm":
        decode_head_on(monkeypatch)
    model = build(arch).double()
    lean = LeanDecoder.of(model)
    uids, umask = encode_prompts(TOK, PROMPTS)  # [3, Tp] distinct prompts
    rows = torch.tensor([0, 0, 1, 2, 2, 2])
    logits, cache = lean.start(uids, umask, rows, max_new_tokens=7)
    assert cache.rows == 6 and logits.shape == (6, VOCAB)
    ids, mask = uids[rows], umask[rows]  # the reference sequences of the live rows
    g = torch.Generator().manual_seed(0)
    checked = 0
    for step in range(7):
        ref = hf_last_logits(model, ids, mask)
        assert max_diff(logits, ref) < 1e-10, step
        assert logits.abs().max() > 1  # far from uniform
        checked += len(ref)
        if step == 2:  # rows 1 and 4 finish (one of a group, one of another)
            keep = torch.tensor([0, 2, 3, 5])
        elif step == 4:  # and one more, leaving one row per prompt
            keep = torch.tensor([1, 2, 3])
        else:
            keep = None
        if keep is not None:
            cache.keep(keep)
            ids, mask = ids[keep], mask[keep]
            assert cache.rows == len(keep)
        tokens = torch.randint(4, VOCAB, (cache.rows,), generator=g)
        assert torch.equal(cache.positions(), mask.sum(-1))
        logits = lean.step(tokens, cache)
        ids = torch.cat([ids, tokens[:, None]], 1)
        mask = torch.cat([mask, mask.new_ones(len(tokens), 1)], 1)
    assert max_diff(logits, hf_last_logits(model, ids, mask)) < 1e-10
    assert checked == 6 * 3 + 4 * 2 + 3 * 2


# --------------------------------------------------------------------------------------------- rollouts


def eos_prone(model, bias: float = 2.5):
    """Give the LM head a bias that raises EOS, so that rows finish at different steps (p(EOS) ~ 0.1)."""
    head = model.lm_head
    new = torch.nn.Linear(head.in_features, head.out_features, bias=True, dtype=head.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(head.weight)
        new.bias.zero_()
        new.bias[EOS] = bias
    model.lm_head = new
    return model


def spy(monkeypatch: pytest.MonkeyPatch, cls: type, name: str, record: Callable, before: bool = False) -> list:
    """Wrap ``cls.name`` so that each call appends record(self, args) (taken before or after it) to a list."""
    calls: list = []
    orig = getattr(cls, name)

    def wrapped(self, *args):
        if before:
            calls.append(record(self, args))
        out = orig(self, *args)
        if not before:
            calls.append(record(self, args))
        return out

    monkeypatch.setattr(cls, name, wrapped)
    return calls


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.7, 0.9)])
def test_lean_rollouts_match_hf_teacher_forcing_with_rows_finishing_at_different_steps(monkeypatch, temperature, top_p):
    model = eos_prone(build("llama"))
    compactions = spy(monkeypatch, KVCache, "keep", lambda c, args: (c.rows, len(args[0])), before=True)
    # after each step: (live rows, cache rows); live < cache means finished rows rode along
    steps = spy(monkeypatch, _LeanEngine, "step", lambda e, args: (len(args[0]), e.cache.rows))
    r = generate(
        model,
        TOK,
        PROMPTS,
        group_size=4,
        max_new_tokens=20,
        temperature=temperature,
        top_p=top_p,
        generator=torch.Generator().manual_seed(0),
        backend="lean",
    )
    lengths = r.lengths
    assert len(r) == 12 and len(set(lengths.tolist())) >= 4  # rows finished at many different steps
    ended = ~r.truncated
    assert int(ended.sum()) >= 3 and int(lengths.max()) > int(lengths[ended].min())  # some ended, others went on
    assert compactions and all(kept < before for before, kept in compactions)  # the cache was compacted
    assert any(live < rows for live, rows in steps)  # and finished rows rode along lazily before that
    m = r.response_mask.bool()
    for i in torch.nonzero(~r.truncated).flatten().tolist():
        assert r.response_ids[i, lengths[i] - 1] == EOS and not (r.response_ids[i, : lengths[i] - 1] == EOS).any()
    assert torch.all(r.response_ids[~m] == PAD) and torch.all(r.response_mask[~m] == 0)
    assert torch.all(r.logp[~m] == 0) and torch.all(r.entropy[~m] == 0)
    batch = (r.prompt_ids, r.prompt_mask, r.response_ids, r.response_mask)
    with torch.no_grad():
        lp_h, ent_h, _ = teacher_forced(model, *batch, temperature, backend="hf")
        lp_l, ent_l, _ = teacher_forced(model, *batch, temperature, backend="lean")
    assert int(m.sum()) > 40
    assert max_diff(r.logp[m], lp_h[m]) < 1e-5 and max_diff(r.entropy[m], ent_h[m]) < 1e-5
    assert max_diff(lp_l[m], lp_h[m]) < 1e-5 and max_diff(ent_l[m], ent_h[m]) < 1e-5


@pytest.mark.parametrize("decode", ["plain", "decode_mm_blocked"])
def test_lean_and_hf_sampling_draw_the_same_tokens_from_one_seed(decode, monkeypatch):
    """Both engines give the sampler the same distributions (float64: equal far below a float32 ulp), also with
    the decode head's W x^T path and the sampling arithmetic in blocks of 2 rows (the HF side blocks too)."""
    if decode != "plain":
        decode_head_on(monkeypatch)
        monkeypatch.setattr("entrolab.rollout.DRAW_ROWS", 2)
        monkeypatch.setattr("entrolab.rollout.DRAW_BLOCK_ENTRIES", 0)
    model = eos_prone(build("qwen2"), bias=3.5).double()
    kw = dict(group_size=3, max_new_tokens=12, temperature=0.7, top_p=0.9, batch_size=5)  # two chunks
    a = generate(model, TOK, PROMPTS, generator=torch.Generator().manual_seed(2), backend="lean", **kw)
    b = generate(model, TOK, PROMPTS, generator=torch.Generator().manual_seed(2), backend="hf", **kw)
    assert len(set(a.lengths.tolist())) >= 4
    assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.response_mask, b.response_mask)
    assert max_diff(a.logp, b.logp) < 1e-6 and max_diff(a.entropy, b.entropy) < 1e-6


@torch.no_grad()
def test_a_decode_step_can_run_the_lm_head_on_some_cache_rows_only(monkeypatch):
    decode_head_on(monkeypatch)
    model = build("qwen2").double()
    lean = LeanDecoder.of(model)
    uids, umask = encode_prompts(TOK, PROMPTS)
    rows = torch.tensor([0, 1, 2, 2])
    tokens = torch.tensor([5, 6, 7, 8])
    _, c1 = lean.start(uids, umask, rows, max_new_tokens=3)
    _, c2 = lean.start(uids, umask, rows, max_new_tokens=3)
    full = lean.step(tokens, c1)  # [4, V]
    for some in (torch.tensor([2]), torch.tensor([0, 3])):  # 1 row (doubled inside) and 2 rows
        assert max_diff(lean.step(tokens, c2, rows=some), full[some]) < 1e-12
        c2.length -= 1  # the same step again


def test_blocked_draws_equal_one_block_bit_for_bit(monkeypatch):
    """``_draw`` in blocks of rows: the same tokens, log-probs, entropies and extras as all rows at once."""
    from entrolab.rollout import _draw

    logits = torch.randn(11, VOCAB, generator=torch.Generator().manual_seed(0)) * 3
    extras = {"max": lambda z: z.amax(-1)}
    outs = []
    monkeypatch.setattr("entrolab.rollout.DRAW_BLOCK_ENTRIES", 0)
    for block in (1000, 4, 1):
        monkeypatch.setattr("entrolab.rollout.DRAW_ROWS", block)
        outs.append(_draw(logits, 0.7, 0.95, torch.Generator().manual_seed(3), extras))
    for other in outs[1:]:
        for a, b in zip(outs[0][:4], other[:4], strict=True):
            assert torch.equal(a, b)
        assert torch.equal(outs[0][4]["max"], other[4]["max"])
    assert torch.allclose(outs[0][3], torch.logsumexp(logits / 0.7, -1), atol=1e-5)
    assert len(set(outs[0][0].tolist())) > 3


# ------------------------------------------------------------------------------------------ backend choice


def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=128, bos_token_id=1, eos_token_id=EOS
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return GPT2LMHeadModel(cfg).eval()


def test_a_model_lean_does_not_cover_runs_through_hf():
    model = tiny_gpt2()
    assert LeanDecoder.of(model) is None
    batch = responses()
    with torch.no_grad():
        auto = teacher_forced(model, *batch, backend="auto")
        hf = teacher_forced(model, *batch, backend="hf")
    assert torch.equal(auto[0], hf[0]) and torch.equal(auto[1], hf[1])
    kw = dict(group_size=2, max_new_tokens=6)
    a = generate(model, TOK, PROMPTS, generator=torch.Generator().manual_seed(0), backend="auto", **kw)
    b = generate(model, TOK, PROMPTS, generator=torch.Generator().manual_seed(0), backend="hf", **kw)
    assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.logp, b.logp)
    with pytest.raises(ValueError, match="'gpt2'"):
        teacher_forced(model, *batch, backend="lean")
    with pytest.raises(ValueError, match="'gpt2'"):
        generate(model, TOK, PROMPTS, backend="lean")


def test_an_unknown_backend_is_refused_naming_the_allowed_ones():
    model = build("llama")
    allowed = r"\['auto', 'lean', 'hf'\]"
    with pytest.raises(ValueError, match=rf"unknown backend 'nope'; allowed: {allowed}"):
        generate(model, TOK, PROMPTS, backend="nope")
    with pytest.raises(ValueError, match=allowed):
        teacher_forced(model, *responses(), backend="nope")
    with pytest.raises(ValueError, match=rf"backend must be one of {allowed}, got 'nope'"):
        TrainConfig(backend="nope")
    assert TrainConfig(backend="lean").backend == "lean" and TrainConfig().backend == "auto"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("final_logit_softcapping", 30.0),
        ("logit_scale", 2.0),
        ("hidden_act", "gelu"),
        ("rope_parameters", {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}),
    ],
)
def test_a_config_edited_in_place_is_seen(name, value):
    model = build("llama")
    assert LeanDecoder.of(model) is not None
    old = getattr(model.config, name, None)
    setattr(model.config, name, value)
    assert LeanDecoder.of(model) is None
    with pytest.raises(ValueError, match="'llama'"):
        teacher_forced(model, *responses(), backend="lean")
    setattr(model.config, name, old)
    assert LeanDecoder.of(model) is not None


def test_a_sliding_window_turned_on_is_seen():
    model = build("qwen2")
    assert LeanDecoder.of(model) is not None
    model.config.use_sliding_window = True
    assert LeanDecoder.of(model) is None
    mistral = build("mistral")
    mistral.config.sliding_window = 4
    assert LeanDecoder.of(mistral) is None
