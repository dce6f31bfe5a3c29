"""The planner (clipbench/plan.py): memory terms checked by hand and against what torch keeps,
parameter counts against transformers' models, the budget search against a brute-force scan,
shapes, the study's DAG-time check and `clipbench plan`."""

import copy
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from clipbench import cli, plan
from clipbench.config import load_yaml
from clipbench.logprobs import collate, token_logprobs
from clipbench.study import StudyConfigError, check_study

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "workflows" / "config" / "paper.yaml"
DEFAULT = ROOT / "workflows" / "config" / "default.yaml"


def paper() -> dict:
    return load_yaml(PAPER.read_text())


# --------------------------------------------------------------------------- memory terms by hand


def test_per_parameter_terms():
    assert plan.weight_bytes(1000) == 4000  # float32 master weights, both dtypes
    assert plan.gradient_bytes(1000) == 4000
    assert plan.adamw_state_bytes(1000) == 8000  # exp_avg + exp_avg_sq, float32
    assert plan.autocast_copy_bytes(1000, "bfloat16") == 2000
    assert plan.autocast_copy_bytes(1000, "float32") == 0
    with pytest.raises(plan.PlanError, match="dtype must be one of float32, bfloat16"):
        plan.dtype_bytes("float16")


SMALL = plan.ModelShape(
    model_type="qwen2",
    vocab_size=1000,
    hidden_size=64,
    intermediate_size=160,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=16,
    tied_embeddings=True,
    attention_bias=True,
)


def test_logprob_term_by_hand():
    head_grad = 4 * 1000 * 64  # the LM head's weight gradient, float32
    # several chunks: autograd's buffer of their summed gradients, a new one and the sum
    assert plan.logprob_bytes(SMALL, 300, 128, "float32") == 128 * 1000 * 8 + 3 * head_grad
    assert plan.logprob_bytes(SMALL, 300, 128, "bfloat16") == 128 * 1000 * 12 + 3 * head_grad
    assert plan.logprob_bytes(SMALL, 100, 128, "float32") == 100 * 1000 * 8 + head_grad  # one chunk
    assert plan.logprob_bytes(SMALL, 300, None, "float32") == 300 * 1000 * 8 + head_grad
    assert plan.backward_end_bytes(SMALL) == 3 * head_grad  # tied: the embedding's meets the head's
    assert plan.backward_end_bytes(replace(SMALL, tied_embeddings=False)) == head_grad


def test_layer_activations_by_hand():
    # float32: 4 x (6h + 2 + q + 4i) per token, 4 x (2q + 2kv + heads) per padded position
    assert plan.layer_activation_bytes(SMALL, "float32") == (4 * (384 + 2 + 64 + 640), 4 * (128 + 64 + 4))
    qwen3 = replace(SMALL, model_type="qwen3", qk_norm=True, attention_bias=False)
    packed, _ = plan.layer_activation_bytes(qwen3, "float32")
    assert packed == 4 * (384 + 2 + 64 + 640) + 4 * (2 * 64 + 2 * 32 + 4 + 2)


def test_vllm_share_and_kv_cache():
    assert plan.vllm_bytes(80 * plan.GIB, 0.25) == 20 * plan.GIB
    assert SMALL.kv_bytes_per_token("float32") == 2 * 2 * 32 * 4
    assert SMALL.kv_bytes_per_token("bfloat16") == 2 * 2 * 32 * 2


# --------------------------------------------------------------------------- parameter counts


def _count(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("cls", "config"),
    [
        (
            Qwen2ForCausalLM,
            Qwen2Config(
                vocab_size=300,
                hidden_size=64,
                intermediate_size=96,
                num_hidden_layers=3,
                num_attention_heads=4,
                num_key_value_heads=2,
                tie_word_embeddings=True,
            ),
        ),
        (
            Qwen3ForCausalLM,
            Qwen3Config(
                vocab_size=300,
                hidden_size=64,
                intermediate_size=96,
                num_hidden_layers=3,
                num_attention_heads=4,
                num_key_value_heads=2,
                head_dim=24,
                tie_word_embeddings=False,
            ),
        ),
        (
            Qwen3ForCausalLM,
            Qwen3Config(
                vocab_size=300,
                hidden_size=64,
                intermediate_size=96,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=4,
                attention_bias=True,
                tie_word_embeddings=True,
            ),
        ),
        (
            LlamaForCausalLM,
            LlamaConfig(
                vocab_size=300,
                hidden_size=64,
                intermediate_size=96,
                num_hidden_layers=2,
                num_attention_heads=8,
                num_key_value_heads=2,
                tie_word_embeddings=False,
            ),
        ),
    ],
    ids=["qwen2-tied", "qwen3-untied-head_dim", "qwen3-bias", "llama"],
)
def test_parameter_count_is_transformers(cls, config):
    shape = plan.ModelShape.from_config(config.to_dict())
    with torch.device("meta"):
        model = cls(config)
    assert shape.parameters() == _count(model)


def test_the_shipped_qwen3_shape():
    shape, source = plan.load_shape("Qwen/Qwen3-1.7B-Base")
    assert Path(source) == plan.SHAPES_DIR / "Qwen--Qwen3-1.7B-Base.json"
    # The model card's numbers (28 layers, 16 / 8 heads, 1.7B parameters, 1.4B without embeddings).
    assert (shape.num_layers, shape.hidden_size, shape.intermediate_size) == (28, 2048, 6144)
    assert (shape.num_heads, shape.num_kv_heads, shape.head_dim, shape.vocab_size) == (16, 8, 128, 151936)
    assert shape.tied_embeddings and shape.qk_norm and not shape.attention_bias
    config = json.loads((plan.SHAPES_DIR / "Qwen--Qwen3-1.7B-Base.json").read_text())
    config.pop("_comment")
    with torch.device("meta"):
        model = Qwen3ForCausalLM(Qwen3Config(**config))
    assert shape.parameters() == _count(model) == 1_720_574_976
    assert round((shape.parameters() - shape.vocab_size * shape.hidden_size) / 1e9, 1) == 1.4


def test_shapes_from_a_directory_a_file_or_nowhere(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(Qwen2Config(vocab_size=300).to_dict()))
    assert plan.load_shape(str(tmp_path))[0].vocab_size == 300
    assert plan.load_shape("any/thing", shape=tmp_path / "config.json")[1] == str(tmp_path / "config.json")
    with pytest.raises(plan.PlanError, match=r"Org--Model\.json"):
        plan.load_shape("Org/Model")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(plan.PlanError, match="model_type 'gpt2' is not one the planner counts"):
        plan.load_shape(str(tmp_path))


# --------------------------------------------------------------------------- activations: what torch keeps


def _tiny(kind: str, layers: int):
    common = dict(
        vocab_size=500,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    config = Qwen3Config(head_dim=16, **common) if kind == "qwen3" else Qwen2Config(**common)
    model = (Qwen3ForCausalLM if kind == "qwen3" else Qwen2ForCausalLM)(config).float().eval()
    model.config._attn_implementation = "sdpa"
    return model


def _saved_bytes(model, batch, chunk, dtype) -> int:
    """Bytes of the tensors autograd saves for backward in `token_logprobs`: parameters and
    autocast's weight copies (the planner's weight terms) left out."""
    saved = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        saved[storage.data_ptr()] = (storage.nbytes(), tuple(tensor.shape), tensor.dtype)
        return tensor

    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16")
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
        token_logprobs(model, batch, 1.0, chunk_tokens=chunk)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    shapes = {tuple(p.shape) for p in model.parameters()} | {tuple(p.shape)[::-1] for p in model.parameters()}
    return sum(
        nbytes
        for ptr, (nbytes, shape, kind) in saved.items()
        if ptr not in params and not (kind == torch.bfloat16 and shape in shapes)
    )


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("kind", ["qwen2", "qwen3"])
@pytest.mark.parametrize("chunk", [None, 16])
def test_activations_are_what_autograd_saves(kind, dtype, chunk):
    torch.manual_seed(0)
    prompts = [[5] * 7, [6] * 9, [7] * 4]
    completions = [[8] * 20, [9] * 11, [10] * 25]  # unequal: the attention runs padded
    batch = collate(prompts, completions, 0)
    tokens, responses = int(batch.attention_mask.sum()), int(batch.response_mask.sum())
    padded = batch.attention_mask.numel()  # rows x longest
    one, two = (_saved_bytes(_tiny(kind, layers), batch, chunk, dtype) for layers in (1, 2))
    shape = plan.ModelShape.from_config(_tiny(kind, 1).config.to_dict())
    packed, per_position = plan.layer_activation_bytes(shape, dtype)
    assert two - one == packed * tokens + per_position * padded  # one layer, exactly
    predicted = plan.activation_bytes(
        replace(shape, num_layers=2),
        tokens,
        responses,
        dtype,
        padding=padded / tokens,
        chunked=chunk is not None,
    )
    assert predicted == pytest.approx(two, rel=0.02)  # the final norm, rotary tables, indices, logits


def test_checkpointing_keeps_each_layer_input():
    shape = plan.ModelShape.from_config(_tiny("qwen2", 1).config.to_dict())
    shape = replace(shape, num_layers=28)
    full = plan.activation_bytes(shape, 1000, 500, "float32", padding=1.0)
    kept = plan.activation_bytes(shape, 1000, 500, "float32", padding=1.0, checkpointing=True)
    packed, padded = plan.layer_activation_bytes(shape, "float32")
    assert full - kept == 27 * (packed + padded) * 1000 - 28 * 4 * 64 * 1000


# --------------------------------------------------------------------------- the budget


def _run(**changes) -> plan.RunSettings:
    settings = dict(
        prompts_per_step=16,
        samples_per_prompt=8,
        minibatches=4,
        epochs=1,
        steps=10,
        prompt_tokens=100,
        max_new_tokens=400,
        budget=None,
        chunk=64,
        engine="vllm",
        vllm_utilization=0.3,
    )
    return plan.RunSettings(**(settings | changes))


def test_micro_batch_tokens():
    run = _run()  # minibatch: 32 sequences of at most 500 tokens
    assert run.micro_batches() == [(32 * 500, 2.0)]  # no budget: the whole minibatch, padded
    # a full budget of several sequences (padded), or the longest sequence alone (not padded)
    assert run.micro_batches(2000) == [(2000, 2.0), (500, 1.0)]
    assert run.micro_batches(300) == [(300, 2.0), (500, 1.0)]
    assert run.micro_batches(10**9) == [(32 * 500, 2.0), (500, 1.0)]
    small, alone = (plan.memory(SMALL, run, budget=b) for b in (300, 100))
    assert small.micro_tokens == alone.micro_tokens == 500  # the longest sequence decides


def _gpu(gib: float) -> plan.Gpu:
    return replace(plan.GPUS["h100-80gb"], name="test", memory=int(gib * plan.GIB))


@pytest.mark.parametrize("gib", [23, 25, 26, 28, 31, 34])
def test_largest_budget_is_the_last_that_fits(gib):
    shape = replace(plan.load_shape("Qwen/Qwen3-1.7B-Base")[0], num_layers=4)
    run = _run()
    gpu = _gpu(gib)
    limit = plan.usable_bytes(gpu)
    best = plan.largest_budget(shape, run, gpu)
    assert run.longest <= best < 32 * 500
    assert plan.memory(shape, run, gpu_memory=gpu.memory, budget=best).peak <= limit
    assert plan.memory(shape, run, gpu_memory=gpu.memory, budget=best + 1).peak > limit
    scan = max(
        b
        for b in range(run.longest, 32 * 500 + 1, 7)
        if plan.memory(shape, run, gpu_memory=gpu.memory, budget=b).peak <= limit
    )
    assert best - 7 < scan <= best


def test_largest_budget_at_the_ends():
    shape = replace(plan.load_shape("Qwen/Qwen3-1.7B-Base")[0], num_layers=4)
    assert plan.largest_budget(shape, _run(), _gpu(200)) == 32 * 500  # the whole minibatch fits
    assert plan.largest_budget(shape, _run(), _gpu(12)) is None  # not even one sequence


def test_peak_is_persistent_plus_the_larger_phase():
    m = plan.memory(SMALL, _run(engine="hf"), gpu_memory=10 * plan.GIB)
    assert m.vllm == 0 and m.rollout > 0
    assert m.peak == m.runtime + m.weights + m.optimizer + max(m.update, m.rollout)
    m = plan.memory(SMALL, _run(reference=True), gpu_memory=10 * plan.GIB)
    assert m.reference == m.weights and m.vllm == 3 * plan.GIB
    assert m.update == m.gradients + max(m.activations + m.working + m.logprobs, m.backward_end)


# --------------------------------------------------------------------------- time


def test_forward_flops_by_hand():
    flops = plan.forward_flops(SMALL, tokens=10, response_tokens=4, sequence=5)
    layer = 64 * 64 + 2 * 64 * 32 + 64 * 64 + (64 + 64) + 3 * 64 * 160  # weights incl. q/k/v biases
    assert flops == 2 * 2 * layer * 10 + 2 * 1000 * 64 * 4 + 2 * 2 * 64 * 5 * 10


def test_decode_rate_is_bandwidth_bound():
    gpu = _gpu(80)
    share = 20 * plan.GIB
    rate, active = plan.decode_rate(SMALL, gpu, "float32", share, sequence=1000, sequences=50)
    assert active == 50  # the cache holds all of them
    step = (SMALL.parameters() * 4 + 50 * 1000 * SMALL.kv_bytes_per_token("float32")) / (
        gpu.bandwidth * plan.DECODE_BANDWIDTH_EFFICIENCY
    )
    assert rate == pytest.approx(50 / step)
    assert plan.decode_rate(SMALL, gpu, "float32", plan.GIB, 1000, 50) == (0.0, 0)  # no room for a cache


def test_bfloat16_trains_faster_and_checkpointing_slower():
    shape = plan.load_shape("Qwen/Qwen3-1.7B-Base")[0]
    gpu = plan.GPUS["h100-80gb"]
    base = plan.step_time(shape, _run(), gpu).training
    assert plan.step_time(shape, _run(dtype="bfloat16"), gpu).training == pytest.approx(base * 66.9 / 989.4)
    assert plan.step_time(shape, _run(checkpointing=True), gpu).training > base


# --------------------------------------------------------------------------- the study and the CLI


def test_the_paper_study_fits_one_80gb_gpu():
    data = paper()
    assert data["resources"]["train"]["gpu_model"] == "h100-80gb"
    result = plan.check_fits(data)
    assert result.fits and result.gpu.name == "h100-80gb"
    assert result.run.budget <= result.budget  # its micro-batch budget is one that fits
    assert result.memory.peak <= 0.9 * 81559 * plan.MIB
    check_study(data)  # the DAG-time check passes


def test_a_study_that_does_not_fit_is_refused_with_its_numbers():
    data = paper()
    data["resources"]["train"]["gpu_model"] = "a100-40gb"
    with pytest.raises(StudyConfigError) as err:
        check_study(data)
    message = str(err.value)
    assert message.startswith("config resources.train.gpu_model: the train job does not fit one a100-40gb")
    assert "GiB usable" in message and "AdamW state" in message and "vLLM" in message


def test_a_too_large_budget_is_refused_with_the_one_that_fits():
    data = copy.deepcopy(paper())
    data["train"]["optim"]["max_tokens_per_microbatch"] = 200_000
    with pytest.raises(plan.PlanError, match=r"the largest micro-batch budget that fits is [\d,]+ tokens"):
        plan.check_fits(data)


def test_an_unknown_gpu_kind_is_named():
    data = paper()
    data["resources"]["train"]["gpu_model"] = "h100"
    with pytest.raises(
        StudyConfigError, match="config resources.train.gpu_model: unknown GPU kind 'h100'; known:"
    ):
        check_study(data)


def test_no_gpu_kind_no_check():
    data = load_yaml(DEFAULT.read_text())
    assert plan.check_fits(data) is None
    result = plan.plan_config(data, name="default")  # memory only: the SFT model's shape
    assert result.gpu is None and result.shape.num_layers == 4
    assert "no fit check, no time" in plan.format_plan(result)


def test_plan_command_prints_the_terms(capsys):
    assert cli.main(["plan", str(PAPER)]) == 0
    out = capsys.readouterr().out
    for term in (
        "weights",
        "AdamW state",
        "gradients",
        "activations of one micro-batch",
        "log-prob chunk",
        "vLLM share",
        "fits one h100-80gb",
        "largest micro-batch budget that fits",
        "GPU-hours",
        "assumptions",
    ):
        assert term in out, term
    assert cli.main(["plan", str(PAPER), "--gpu", "a100-40gb"]) == 0
    assert "DOES NOT FIT" in capsys.readouterr().out


def test_plan_command_overrides_dtype_and_checkpointing(capsys):
    cli.main(["plan", str(PAPER), "--dtype", "bfloat16", "--gradient-checkpointing"])
    out = capsys.readouterr().out
    assert "run: bfloat16, gradient checkpointing on" in out
    assert "bfloat16 autocast weight copies" in out


def test_plan_command_errors_are_one_line(tmp_path, capsys):
    assert cli.main(["plan", str(tmp_path / "nope.yaml")]) == 2
    assert "clipbench plan: error:" in capsys.readouterr().err
    config = tmp_path / "run.yaml"
    config.write_text("model: Org/Model\n")
    assert cli.main(["plan", str(config)]) == 2
    assert "no shape to plan with" in capsys.readouterr().err


def test_a_train_config_is_planned(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(Qwen2Config(vocab_size=300, num_hidden_layers=2).to_dict()))
    result = plan.plan_config(
        {"model": str(model), "optim": {"max_tokens_per_microbatch": 512}}, name="x", gpu="a100-80gb"
    )
    assert result.fits and result.run.budget == 512 and result.memory.vllm == 0
    assert math.isfinite(result.time.total)
