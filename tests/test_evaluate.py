"""The evaluation runner (clipbench.evaluate) and its lm-eval task (benchmarks.lm_eval_tasks).

End-to-end tests run a tiny locally built model through lm-eval on CPU, offline; they skip when
lm-eval is not installed (``pip install -e ".[eval]"``). ``-m slow`` adds SmolLM2-135M-Instruct on
20 GSM8K problems (set ``CLIPBENCH_SMOLLM2_DIR`` to an existing conversion to skip converting).
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import hashlib
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clipbench import benchmarks, lm_eval_layout
from clipbench import evaluate as ev
from clipbench.benchmarks import lm_eval_tasks

# Everything here is offline: local model directories, local or generated data.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"
requires_data = pytest.mark.skipif(
    not DATA_DIR.is_dir(), reason=f"offline data copies not found at {DATA_DIR} (see DESIGN.md)"
)
requires_lm_eval = pytest.mark.skipif(
    importlib.util.find_spec("lm_eval") is None,
    reason='lm-eval is not installed (pip install -e ".[eval]", i.e. lm-eval==0.4.13)',
)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def check_outputs(summary: dict, out: Path, n_problems: int, k: int) -> list[dict]:
    """Both files exist and agree with each other; returns the sample lines."""
    assert json.loads(out.read_text()) == json.loads(json.dumps(summary))
    samples = read_jsonl(out.with_name(f"{out.stem}.samples.jsonl"))
    assert len(samples) == n_problems * k == summary["n_samples"]
    assert summary["n_problems"] == n_problems and summary["k"] == k
    assert [(s["problem_index"], s["sample"]) for s in samples] == [
        (i, j) for i in range(n_problems) for j in range(k)
    ]
    keys = {"problem_id", "prompt", "generation", "gold", "extracted", "correct", "status"}
    assert all(keys <= set(s) for s in samples)

    statuses = summary["statuses"]
    assert set(statuses) == {"ok", "no_answer", "timeout", "error"}
    assert sum(statuses.values()) == len(samples)
    for status, count in statuses.items():
        assert count == sum(s["status"] == status for s in samples)

    by_problem = [[s["correct"] for s in samples if s["problem_index"] == i] for i in range(n_problems)]
    assert summary["avg@k"] == pytest.approx(sum(sum(c) / k for c in by_problem) / n_problems)
    assert summary["pass@k"] == pytest.approx(sum(any(c) for c in by_problem) / n_problems)
    assert summary["pass@1"] == summary["avg@k"]
    # lm-eval's own aggregation of process_results agrees with ours
    assert summary["lm_eval"]["metrics"]["avg_at_k,verified"] == pytest.approx(summary["avg@k"])
    assert summary["lm_eval"]["metrics"]["pass_at_k,verified"] == pytest.approx(summary["pass@k"])

    # lm-eval's own layout of the run, beside the summary (clipbench.lm_eval_layout): its scores
    # and standard error are the summary's
    (results_file,) = lm_eval_layout.folder(out).glob("results_*.json")
    lm_eval_results = json.loads(results_file.read_text())["results"][
        summary["lm_eval"]["task_config"]["task"]
    ]
    assert lm_eval_results["avg_at_k,verified"] == summary["avg@k"]
    assert lm_eval_results["pass_at_k,verified"] == summary["pass@k"]
    assert lm_eval_results["avg_at_k_stderr,verified"] == pytest.approx(summary["avg@k_stderr"])
    lm_eval_document = json.loads(results_file.read_text())
    assert lm_eval_document["config"]["limit"] == summary["limit"]
    (task_config,) = lm_eval_document["configs"].values()  # the final prompts file, not the temporary one
    assert set(task_config["dataset_kwargs"]["data_files"].values()) == {
        str(out.with_name(f"{out.stem}.prompts.jsonl").absolute())
    }
    assert "cache_dir" not in task_config["dataset_kwargs"]

    prompts = read_jsonl(out.with_name(f"{out.stem}.prompts.jsonl"))
    assert len(prompts) == n_problems
    assert [s["prompt"] for s in samples[::k]] == [p["prompt"] for p in prompts]

    prov = summary["provenance"]
    assert prov["seed"] == summary["seed"]
    assert prov["config"]["benchmark"] == summary["benchmark"]
    assert {"commit", "versions", "config_hash"} <= set(prov)
    assert prov["versions"]["lm-eval"] is not None
    assert summary["lm_eval"]["task_config"]["repeats"] == k
    return samples


# --- end to end, tiny model --------------------------------------------------------------------


@requires_lm_eval
@requires_data
def test_math500_through_lm_eval(tiny_dir, tmp_path):
    out = tmp_path / "math500.json"
    summary = ev.evaluate(tiny_dir, "math500", out=out, k=2, limit=5, data_dir=DATA_DIR, max_new_tokens=16)
    samples = check_outputs(summary, out, n_problems=5, k=2)

    spec = benchmarks.get_spec("math500")
    assert summary["source"]["sha256"] == spec.local["test"].sha256
    assert summary["source"]["sha256_ok"] is True
    assert summary["temperature"] == 1.0  # k > 1 samples
    assert summary["model"]["path"] == str(tiny_dir)
    assert summary["model"]["clipbench_model"]["builder"] == "clipbench.models.build_tiny_model"
    gold = {p.id: p.answer for p in benchmarks.load("math500", data_dir=DATA_DIR, n=5)}
    assert all(s["gold"] == gold[s["problem_id"]] for s in samples)
    gen = summary["lm_eval"]["task_config"]["generation_kwargs"]
    assert gen["max_gen_toks"] == 16 and gen["do_sample"] is True and gen["until"] == ["<|im_end|>"]


@pytest.fixture(scope="module")
def synthetic_run(tiny_dir, tmp_path_factory):
    if importlib.util.find_spec("lm_eval") is None:
        pytest.skip("lm-eval is not installed")
    out = tmp_path_factory.mktemp("synthetic") / "synthetic.json"
    kwargs = dict(k=2, limit=4, max_new_tokens=16)
    return out, kwargs, ev.evaluate(tiny_dir, "synthetic", out=out, **kwargs)


@requires_lm_eval
def test_synthetic_through_lm_eval(synthetic_run):
    out, _, summary = synthetic_run
    check_outputs(summary, out, n_problems=4, k=2)
    assert summary["source"]["kind"] == "generated" and summary["source"]["sha256"] is None
    prompts_file = out.with_name(summary["files"]["prompts"])
    assert summary["files"]["prompts_sha256"] == hashlib.sha256(prompts_file.read_bytes()).hexdigest()
    problems = benchmarks.load("synthetic", split="test", n=4)
    assert [p["prompt"] for p in read_jsonl(prompts_file)] == [f"{p.problem}\n" for p in problems]


@requires_lm_eval
def test_same_call_same_samples(tiny_dir, synthetic_run, tmp_path):
    out, kwargs, _ = synthetic_run
    again = tmp_path / "again.json"
    ev.evaluate(tiny_dir, "synthetic", out=again, **kwargs)
    first = out.with_name(f"{out.stem}.samples.jsonl").read_bytes()
    assert again.with_name("again.samples.jsonl").read_bytes() == first
    other_seed = tmp_path / "seed1.json"
    ev.evaluate(tiny_dir, "synthetic", out=other_seed, seed=1, **kwargs)
    assert other_seed.with_name("seed1.samples.jsonl").read_bytes() != first


@requires_lm_eval
def test_cli_subcommand(tiny_dir, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="clipbench")
    ev.add_cli(parser.add_subparsers(dest="command"))
    out = tmp_path / "cli.json"
    args = parser.parse_args(
        ["evaluate", "--model", str(tiny_dir), "--benchmark", "synthetic", "--k", "1", "--limit", "2"]
        + ["--max-new-tokens", "8", "--out", str(out)]
    )
    assert args.func(args) == 0
    summary = json.loads(out.read_text())
    assert (summary["k"], summary["n_problems"], summary["temperature"]) == (1, 2, 0.0)  # k=1: greedy
    assert summary["lm_eval"]["task_config"]["generation_kwargs"]["do_sample"] is False
    assert "avg@k" in capsys.readouterr().out


# --- bad input fails before any model is loaded -------------------------------------------------


@pytest.fixture
def no_compute(monkeypatch):
    """Loading a tokenizer, a config or running lm-eval fails the test."""
    import transformers

    def forbidden(*args, **kwargs):
        raise AssertionError("compute started before the input was validated")

    monkeypatch.setattr(ev, "_run_lm_eval", forbidden)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", forbidden)
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", forbidden)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"benchmark": "nope"}, "benchmark: unknown benchmark 'nope'"),
        ({"k": 0}, "k: must be >= 1 or null, got 0"),
        ({"k": 1.5}, "k: expected an integer, got 1.5"),
        ({"limit": 0}, "limit: must be >= 1 or null, got 0"),
        ({"max_new_tokens": 0}, "max_new_tokens: must be >= 1 or null, got 0"),
        ({"batch_size": 0}, "batch_size: must be >= 1, got 0"),
        ({"temperature": -1.0}, "temperature: must be finite and >= 0, got -1.0"),
        ({"backend": "tgi"}, "backend: unknown backend 'tgi'; available: hf, vllm"),
        ({"prompt_style": "fancy"}, "prompt_style: unknown prompt_style 'fancy'; available: base, chat"),
        ({"out": "summary.txt"}, "out must be a .json file"),
        ({"split": "nosuch"}, "split: math500 has no split 'nosuch'"),
        ({"model": "/nonexistent/model"}, "model: /nonexistent/model is not a directory"),
        ({"data_dir": "/nonexistent/data"}, "data_dir: /nonexistent/data is not a directory"),
    ],
)
def test_bad_input_names_the_field(no_compute, tiny_dir, tmp_path, changes, message):
    kwargs = {"model": tiny_dir, "benchmark": "math500", "out": tmp_path / "s.json", "data_dir": tmp_path}
    kwargs |= changes
    with pytest.raises(ValueError, match=re.escape(message)):
        ev.evaluate(kwargs.pop("model"), kwargs.pop("benchmark"), **kwargs)
    assert not (tmp_path / "s.json").exists()


def test_out_that_cannot_be_written_fails_before_any_work(no_compute, tiny_dir, tmp_path):
    (tmp_path / "taken.json").mkdir()
    with pytest.raises(ValueError, match=r"--out .*taken\.json is a directory"):
        ev.evaluate(tiny_dir, "synthetic", out=tmp_path / "taken.json")
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ValueError, match=r"--out .*a_file is a file, not a folder"):
        ev.evaluate(tiny_dir, "synthetic", out=tmp_path / "a_file" / "deeper" / "s.json")
    (tmp_path / "s.samples.jsonl").mkdir()  # a sibling that cannot be replaced counts too
    with pytest.raises(ValueError, match=r"--out .*s\.samples\.jsonl is a directory"):
        ev.evaluate(tiny_dir, "synthetic", out=tmp_path / "s.json")


def test_limit_beyond_a_generated_set_is_capped(no_compute, tiny_dir, tmp_path, monkeypatch):
    asked = []

    def load(benchmark, data_dir, split, limit, load_kwargs):
        asked.append(limit)
        raise KeyboardInterrupt  # stop here: nothing is generated

    monkeypatch.setattr(ev, "_load_problems", load)
    with pytest.warns(UserWarning, match=r"limit=100000000 is more than the 500 problems of synthetic/test"):
        with pytest.raises(KeyboardInterrupt):
            ev.evaluate(tiny_dir, "synthetic", out=tmp_path / "s.json", limit=100_000_000)
    with pytest.raises(KeyboardInterrupt):
        ev.evaluate(tiny_dir, "synthetic", out=tmp_path / "s.json", split="train", limit=20_000)
    assert asked == [500, 20_000]  # train has 20000: that limit stands


def test_missing_local_file_and_model_dir(no_compute, tiny_dir, tmp_path):
    with pytest.raises(ValueError, match=r"data_dir: .*math500/test\.jsonl not found"):
        ev.evaluate(tiny_dir, "math500", out=tmp_path / "s.json", data_dir=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        ev.evaluate(tmp_path / "empty", "synthetic", out=tmp_path / "s.json")


def test_max_new_tokens_beyond_the_context(tiny_dir, tmp_path):
    # the tiny model has 1024 positions; math500's default max_new_tokens is 4096
    with pytest.raises(ValueError, match="max_new_tokens=4096 leaves no room"):
        ev.evaluate(tiny_dir, "synthetic", out=tmp_path / "s.json", max_new_tokens=4096)


# --- the output files are one unit -------------------------------------------------------------


def fake_lm_eval(task: dict, model_name: str, model_args: dict, *, batch_size, seed: int, tracker) -> dict:
    """Stands in for lm-eval: every sample of a problem answers its gold (seed in the text), in a
    results dict of lm-eval's shape, as far as lm-eval's EvaluationTracker reads it to write files."""
    rows = read_jsonl(Path(task["dataset_kwargs"]["data_files"][lm_eval_tasks.DATA_SPLIT]))
    records = [
        {
            "generation": f"run {seed}: \\boxed{{{row['answer']}}}",
            "extracted": row["answer"],
            "method": "boxed",
            "correct": True,
            "status": "ok",
            "detail": None,
        }
        for row in rows
    ]
    k, name = task["repeats"], task["task"]
    samples = [
        {
            "doc_id": i,
            "doc": row,
            "target": row["answer"],
            "arguments": [(row["prompt"], task["generation_kwargs"])],
            "resps": [[r["generation"]] * k],
            "filtered_resps": [[r] * k],
            "filter": lm_eval_tasks.FILTER_NAME,
            "metrics": list(lm_eval_tasks.METRICS),
            **{
                f"{kind}_hash": hashlib.sha256(f"{kind}{i}".encode()).hexdigest()
                for kind in ("doc", "prompt", "target")
            },
            **lm_eval_tasks.problem_metrics([True] * k),
        }
        for i, (row, r) in enumerate(zip(rows, records, strict=True))
    ]
    return {"results": {name: {"name": name}}, "configs": {name: {"task": name}}, "samples": {name: samples}}


def output_files(out: Path) -> dict[str, bytes]:
    """Every file in the output's folder, by its path relative to that folder (subfolders included)."""
    return {
        str(p.relative_to(out.parent)): p.read_bytes() for p in sorted(out.parent.rglob("*")) if p.is_file()
    }


def lm_eval_files(out: Path) -> list[str]:
    """The names in the output's lm-eval folder, each with its date made ``DATE``."""
    names = sorted(p.name for p in lm_eval_layout.folder(out).iterdir())
    return [re.sub(r"_\d{4}-\d\d-\d\dT[\d.-]+\.json", "_DATE.json", name) for name in names]


def test_an_interrupted_run_leaves_no_summary_over_a_partial_set(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(ev, "_run_lm_eval", fake_lm_eval)
    out = tmp_path / "synthetic.json"
    kwargs = dict(k=2, max_new_tokens=8)
    first = ev.evaluate(tiny_dir, "synthetic", out=out, limit=3, **kwargs)
    assert ev.read_outputs(out) == json.loads(json.dumps(first))
    assert (
        first["files"]["samples_sha256"]
        == hashlib.sha256(out.with_name("synthetic.samples.jsonl").read_bytes()).hexdigest()
    )
    assert first["lm_eval"]["task_config"]["dataset_kwargs"]["data_files"]["test"] == str(
        out.with_name("synthetic.prompts.jsonl")
    )
    complete = output_files(out)
    assert sorted(name for name in complete if "/" not in name) == [
        "synthetic.json",
        "synthetic.prompts.jsonl",
        "synthetic.samples.jsonl",
    ]
    assert lm_eval_files(out) == ["results_DATE.json", "samples_clipbench_synthetic_DATE.jsonl"]

    # interrupted during generation: the previous set stays as it was, complete; no temporary file
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ev, "_run_lm_eval", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ev.evaluate(tiny_dir, "synthetic", out=out, limit=4, seed=1, **kwargs)
    assert output_files(out) == complete
    monkeypatch.setattr(ev, "_run_lm_eval", fake_lm_eval)

    # interrupted while the new set is written (before its samples, its lm-eval files or its
    # summary): no summary is left to claim the mix of old and new files, and the set reads as
    # incomplete
    for owner, writer in ((ev, "atomic_write_text"), (lm_eval_layout, "write"), (ev, "atomic_write_json")):
        with monkeypatch.context() as patch:
            patch.setattr(owner, writer, interrupted)
            with pytest.raises(KeyboardInterrupt):
                ev.evaluate(tiny_dir, "synthetic", out=out, limit=4, seed=1, **kwargs)
        assert not out.exists(), writer
        with pytest.raises(ValueError, match="no summary"):
            ev.read_outputs(out)
        assert not [p for p in out.parent.iterdir() if "partial" in p.name]

    # a rerun writes the whole new set
    again = ev.evaluate(tiny_dir, "synthetic", out=out, limit=4, seed=1, **kwargs)
    assert ev.read_outputs(out)["n_problems"] == again["n_problems"] == 4
    samples = read_jsonl(out.with_name("synthetic.samples.jsonl"))
    assert len(samples) == 8 and all(s["generation"].startswith("run 1:") for s in samples)
    # the lm-eval folder holds this run's files only (the first run's were replaced)
    assert lm_eval_files(out) == ["results_DATE.json", "samples_clipbench_synthetic_DATE.jsonl"]
    (lm_eval_samples,) = lm_eval_layout.folder(out).glob("samples_*.jsonl")
    assert len(read_jsonl(lm_eval_samples)) == 4

    # a sibling changed after the summary was written: the set reads as incomplete
    out.with_name("synthetic.samples.jsonl").write_text("")
    with pytest.raises(ValueError, match="synthetic.samples.jsonl is not the file this summary describes"):
        ev.read_outputs(out)


def test_a_killed_runs_partial_prompts_file_is_removed_by_the_next_run(tiny_dir, tmp_path, monkeypatch):
    """SIGKILL skips the ``finally`` that removes the temporary prompts file; the next evaluation of
    the same output removes it, but not one that a running evaluation still holds (its flock)."""
    monkeypatch.setattr(ev, "_run_lm_eval", fake_lm_eval)
    out = tmp_path / "synthetic.json"
    stale = tmp_path / "synthetic.prompts.jsonl.partial-dead1234.jsonl"
    stale.write_text("{}\n")
    held = tmp_path / "synthetic.prompts.jsonl.partial-live5678.jsonl"
    held.write_text("{}\n")
    other = tmp_path / "other.prompts.jsonl.partial-dead9999.jsonl"  # another output's: not ours
    other.write_text("{}\n")
    with open(held, "rb") as holder:
        fcntl.flock(holder.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # a live run of the same output
        ev.evaluate(tiny_dir, "synthetic", out=out, limit=2, k=1, max_new_tokens=8)
        assert not stale.exists()
        assert held.exists() and other.exists()
    assert ev.remove_stale_partials(ev.output_paths(out)) == [held]  # released: now stale too
    assert sorted(p.name for p in tmp_path.iterdir() if "partial" in p.name) == [other.name]


def test_the_stale_file_sweep_removes_only_what_it_can_lock(tmp_path, monkeypatch):
    """Without flock nothing can be known, so nothing is removed; a file that cannot be removed is
    named in a warning and the evaluation goes on."""
    paths = ev.output_paths(tmp_path / "synthetic.json")
    stale = tmp_path / "synthetic.prompts.jsonl.partial-dead.jsonl"
    stale.write_text("{}\n")

    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    with monkeypatch.context() as patch:
        patch.setattr(ev.fcntl, "flock", no_flock)
        assert ev.remove_stale_partials(paths) == [] and stale.exists()

    def refuse(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    with monkeypatch.context() as patch:
        patch.setattr(type(stale), "unlink", refuse)
        with pytest.warns(
            UserWarning, match="partial-dead.jsonl: a stale temporary file that cannot be removed"
        ):
            assert ev.remove_stale_partials(paths) == []
    assert ev.remove_stale_partials(paths) == [stale] and not stale.exists()


# --- arithmetic and task construction (no model) -----------------------------------------------


def test_score_golden_values():
    result = ev.score([[True, False], [False, False], [True, True]])
    assert result["avg@k"] == pytest.approx(0.5)  # (1/2 + 0 + 1) / 3
    assert result["pass@k"] == pytest.approx(2 / 3)
    assert result["pass@1"] == pytest.approx(0.5)
    # per-problem accuracies 0.5, 0, 1: sample std 0.5, over sqrt(3)
    assert result["avg@k_stderr"] == pytest.approx(0.5 / math.sqrt(3))

    result = ev.score([[True, True, False, False]])
    assert (result["avg@k"], result["pass@k"], result["avg@k_stderr"]) == (0.5, 1.0, None)
    assert ev.score([[False]] * 4) == {"avg@k": 0.0, "pass@k": 0.0, "pass@1": 0.0, "avg@k_stderr": 0.0}
    with pytest.raises(ValueError, match="no problems"):
        ev.score([])


def test_process_results_per_problem():
    records = [{"correct": c} for c in (True, False, False, True)]
    assert lm_eval_tasks.process_results({}, [records]) == {"avg_at_k": 0.5, "pass_at_k": 1.0}
    assert lm_eval_tasks.problem_metrics([False, False]) == {"avg_at_k": 0.0, "pass_at_k": 0.0}


def test_verify_filter_scores_every_sample():
    docs = [{"answer": "3"}, {"answer": "\\frac{1}{2}"}]
    resps = [["so \\boxed{3}", "maybe \\boxed{4}"], ["the answer is 0.5", "no idea"]]
    out = lm_eval_tasks.VerifyFilter(fallbacks=("answer_is",)).apply(iter(resps), docs)
    assert [[r["correct"] for r in group] for group in out] == [[True, False], [True, False]]
    assert [[r["status"] for r in group] for group in out] == [["ok", "ok"], ["ok", "no_answer"]]
    assert out[0][0]["generation"] == "so \\boxed{3}" and out[0][0]["extracted"] == "3"
    assert out[1][0]["method"] == "answer_is"


def test_task_config_shape():
    gen = lm_eval_tasks.generation_kwargs(max_new_tokens=64, temperature=1.0, stop=["<|im_end|>"])
    config = lm_eval_tasks.task_config(
        "math500", "rel/prompts.jsonl", k=4, generation=gen, fallbacks=("answer_is",)
    )
    assert config["repeats"] == 4 and config["doc_to_text"] == "{{prompt}}"
    assert Path(config["dataset_kwargs"]["data_files"]["test"]).is_absolute()
    (pipeline,) = config["filter_list"]
    assert pipeline["filter"][0] == {"function": "take_first_k", "k": 4}
    assert pipeline["filter"][1]["function"] is lm_eval_tasks.VerifyFilter
    assert "n" not in config["generation_kwargs"]
    described = lm_eval_tasks.describe_config(config)
    json.dumps(described)  # JSON-safe
    assert described["process_results"] == "clipbench.benchmarks.lm_eval_tasks.process_results"
    with pytest.raises(ValueError, match="k must be >= 1"):
        lm_eval_tasks.task_config("math500", "x.jsonl", k=0, generation=gen, fallbacks=())


def test_sampling_defaults_and_generation_kwargs():
    assert ev.sampling(1, None) == 0.0 and ev.sampling(4, None) == 1.0 and ev.sampling(4, 0.6) == 0.6
    greedy = lm_eval_tasks.generation_kwargs(max_new_tokens=8, temperature=0.0)
    assert greedy == {"until": [], "max_gen_toks": 8, "do_sample": False, "temperature": 0.0}
    hf = lm_eval_tasks.generation_kwargs(max_new_tokens=8, temperature=0.7, backend="hf")
    vllm = lm_eval_tasks.generation_kwargs(max_new_tokens=8, temperature=0.7, backend="vllm")
    assert (hf["top_k"], vllm["top_k"], hf["top_p"], hf["do_sample"]) == (0, -1, 1.0, True)


def test_lm_eval_model_arguments():
    name, args = ev.lm_eval_model("hf", "/m", seed=3)
    assert name == "hf" and args["pretrained"] == "/m" and args["dtype"] == "float32"
    assert args["device"] in ("cpu", "cuda")
    name, args = ev.lm_eval_model("vllm", "/m", seed=3)
    assert name == "vllm"
    assert args == {
        "pretrained": "/m",
        "tokenizer": "/m",
        "dtype": "auto",
        "gpu_memory_utilization": ev.VLLM_GPU_MEMORY_UTILIZATION,
        "seed": 3,
    }


def test_stop_sequences(tiny_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    assert ev.stop_sequences(tokenizer, "base") == ["<|im_end|>"]  # EOS only: never cut \boxed{}
    assert ev.stop_sequences(tokenizer, "chat") == ["<|im_end|>"]

    class QwenBaseLike:  # EOS <|endoftext|>, ChatML turns end with <|im_end|>
        eos_token = "<|endoftext|>"
        chat_template = "{% for m in messages %}<|im_start|>{{ m.content }}<|im_end|>{% endfor %}"

    assert ev.stop_sequences(QwenBaseLike(), "base") == ["<|endoftext|>"]
    assert ev.stop_sequences(QwenBaseLike(), "chat") == ["<|endoftext|>", "<|im_end|>"]


def test_output_paths():
    paths = ev.output_paths("results/evals/base/math500.json")
    assert paths["samples"] == Path("results/evals/base/math500.samples.jsonl")
    assert paths["prompts"] == Path("results/evals/base/math500.prompts.jsonl")


# --- a real small model (slow) -----------------------------------------------------------------


@pytest.mark.slow
@requires_lm_eval
@requires_data
def test_smollm2_gsm8k_chat_greedy(smollm2_dir, tmp_path):
    out = tmp_path / "gsm8k.json"
    start = time.perf_counter()
    summary = ev.evaluate(
        smollm2_dir,
        "gsm8k",
        out=out,
        k=1,
        limit=5,  # 5 problems of 256 greedy tokens: ~30 s on 2 cores (CI's time)
        data_dir=DATA_DIR,
        prompt_style="chat",
        max_new_tokens=256,
    )
    elapsed = time.perf_counter() - start
    samples = check_outputs(summary, out, n_problems=5, k=1)
    assert summary["temperature"] == 0.0 and summary["prompt_style"] == "chat"
    assert all(s["prompt"].startswith("<|im_start|>") for s in samples)
    assert summary["statuses"]["ok"] > 0  # the model answers something the verifier can compare
    print(
        f"\nSmolLM2-135M-Instruct, GSM8K test[:5], chat, greedy, 256 new tokens: "
        f"avg@1 = {summary['avg@k']:.3f} ({sum(s['correct'] for s in samples)}/5), "
        f"statuses {summary['statuses']}, {elapsed:.0f} s"
    )


def test_benchmarks_import_without_lm_eval():
    code = (
        "import sys; sys.modules['lm_eval'] = None\n"  # `import lm_eval` now raises ImportError
        "import clipbench.benchmarks, clipbench.benchmarks.lm_eval_tasks, clipbench.evaluate"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_missing_backend_package_says_how_to_install(tiny_dir, tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real_find_spec(name, *a)
    )
    with pytest.raises(ModuleNotFoundError, match=r"pip install -e '\.\[gpu\]'"):
        ev.evaluate(tiny_dir, "synthetic", out=tmp_path / "s.json", backend="vllm")
    assert not (tmp_path / "s.prompts.jsonl").exists()


def test_missing_accelerate_says_how_to_install(tiny_dir, tmp_path, monkeypatch):
    # lm-eval's hf backend imports accelerate; plain lm-eval does not install it (the hole that
    # broke every evaluation of a fresh `pip install -e ".[dev,eval]"`): say so before any work.
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "accelerate" else real_find_spec(name, *a),
    )
    with pytest.raises(ModuleNotFoundError, match=r"accelerate.*pip install -e '\.\[eval\]'"):
        ev.evaluate(tiny_dir, "synthetic", out=tmp_path / "s.json")
    assert not (tmp_path / "s.prompts.jsonl").exists()


def test_the_eval_extra_brings_what_the_hf_backend_imports():
    # The backend module clipbench evaluates through imports with nothing but the `eval` extra
    # (CI runs the fast suite in a venv holding only `.[dev,eval]`).
    pytest.importorskip("lm_eval")
    importlib.import_module("lm_eval.models.huggingface")
