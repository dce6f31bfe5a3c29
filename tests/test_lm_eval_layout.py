"""clipbench's evaluations in lm-eval's own terms: the results layout written beside the summary
(clipbench.lm_eval_layout) and the tasks as lm-eval YAML files (benchmarks.lm_eval_tasks).

The YAML files are checked three ways: they are what the task shape generates; lm-eval's own loader
reads them as clipbench's inline task (the same hook functions, not copies); and lm-eval's evaluator
scores scripted generations through them to hand-computed values. The end-to-end test runs the
``lm_eval`` command line (a subprocess, offline) on the tiny model and compares it with clipbench's
own evaluation of the same problems under the same decoding, sample by sample and file layout by
file layout.
"""

from __future__ import annotations

import ast
import copy
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from clipbench import benchmarks, lm_eval_layout
from clipbench import evaluate as ev
from clipbench.benchmarks import lm_eval_tasks

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT.parent / "shared" / "data"
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
os.environ.update({key: os.environ.get(key, value) for key, value in OFFLINE.items()})

requires_lm_eval = pytest.mark.skipif(
    importlib.util.find_spec("lm_eval") is None, reason="lm-eval is not installed (pip install -e '.[eval]')"
)
requires_data = pytest.mark.skipif(not DATA_DIR.is_dir(), reason=f"no offline data copies at {DATA_DIR}")
TASK = "clipbench_synthetic"
DATE = r"\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d(\.\d+)?"  # lm-eval's date_id: isoformat with '-' for ':'
# The first synthetic test problem, worked by hand: 8+1=9, -6=3, -2=1, -1=0, +3=3, +6=9, -8=1,
# +7=8, -7=1, +8=9, -5=4.
FIRST_SYNTHETIC = {
    "answer": "4",
    "id": "syn-082e31713dcd",
    "index": 0,
    "prompt": "Compute: 8+1-6-2-1+3+6-8+7-7+8-5\n",
}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def lm_eval_files(folder: Path) -> tuple[dict, list[dict]]:
    """The one results document and the one samples file's lines of ``TASK`` in ``folder``."""
    (results,) = folder.glob("results_*.json")
    (samples,) = folder.glob(f"samples_{TASK}_*.jsonl")
    assert re.fullmatch(f"results_{DATE}.json", results.name)
    assert re.fullmatch(f"samples_{TASK}_{DATE}.jsonl", samples.name)
    return json.loads(results.read_text(encoding="utf-8")), read_jsonl(samples)


# --- the YAML files ----------------------------------------------------------------------------


def test_the_yaml_files_are_the_generated_ones_one_per_registered_set():
    expected = lm_eval_tasks.yaml_files()
    assert sorted(p.name for p in expected) == [f"clipbench_{name}.yaml" for name in benchmarks.available()]
    shipped = sorted(lm_eval_tasks.YAML_DIR.glob("*.yaml"))
    assert shipped == sorted(expected), f"run `{lm_eval_tasks.REGENERATE}` and commit the result"
    for path, text in expected.items():
        assert path.read_text(encoding="utf-8") == text, (
            f"{path.name} differs from the task shape it is generated from: run `{lm_eval_tasks.REGENERATE}`"
        )


def test_the_yaml_files_are_package_data():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'"clipbench\.benchmarks" = \["lm_eval_yaml/\*\.yaml"\]', pyproject)


@requires_lm_eval
@pytest.mark.parametrize("name", benchmarks.available())
def test_lm_eval_reads_each_yaml_file_as_clipbench_task(name):
    """lm-eval's own YAML loader resolves every ``!function`` to clipbench's function itself, and the
    task is the inline one clipbench's evaluation builds, but for its data source and stop strings."""
    from lm_eval.tasks._yaml_loader import load_yaml

    loaded = load_yaml(lm_eval_tasks.YAML_DIR / f"clipbench_{name}.yaml", resolve_func=True)
    assert loaded["custom_dataset"] is lm_eval_tasks.load_docs
    assert loaded["process_results"] is lm_eval_tasks.process_results
    assert loaded["filter_list"][0]["filter"][1]["function"] is lm_eval_tasks.VerifyFilter
    assert loaded == lm_eval_tasks.yaml_task_config(name)

    spec = benchmarks.get_spec(name)
    temperature = ev.sampling(spec.k, None)
    generation = lm_eval_tasks.generation_kwargs(
        max_new_tokens=spec.max_new_tokens, temperature=temperature, stop=["<EOS>"]
    )
    inline = lm_eval_tasks.task_config(
        name, "p.jsonl", k=spec.k, generation=generation, fallbacks=spec.fallbacks
    )
    for config, source in ((loaded, ("custom_dataset",)), (inline, ("dataset_path", "dataset_kwargs"))):
        for key in source:
            del config[key]
        config["generation_kwargs"].pop("until")  # the YAML has none: lm-eval's hf adds the EOS
    assert loaded.pop("metadata") == {"version": 1, "benchmark": name}
    assert inline.pop("metadata") == {"version": 1}
    assert loaded == inline


@requires_lm_eval
def test_load_docs_gives_the_rows_clipbench_hands_lm_eval():
    docs = lm_eval_tasks.load_docs("synthetic", version=1, pretrained="/ignored")[lm_eval_tasks.DATA_SPLIT]
    assert len(docs) == 500  # the test split's size
    assert docs[0] == FIRST_SYNTHETIC and list(docs[0]) == sorted(FIRST_SYNTHETIC)
    with pytest.raises(ValueError, match="names no benchmark"):
        lm_eval_tasks.load_docs(version=1)


@requires_lm_eval
@requires_data
def test_load_docs_reads_the_local_copies_from_metadata_or_the_environment(monkeypatch, tmp_path):
    first = benchmarks.load("math500", data_dir=DATA_DIR, n=1)[0]
    monkeypatch.delenv(lm_eval_tasks.DATA_DIR_ENV, raising=False)
    docs = lm_eval_tasks.load_docs("math500", data_dir=str(DATA_DIR))["test"]
    assert len(docs) == 500 and docs[0]["answer"] == first.answer and docs[0]["id"] == first.id
    assert docs[0]["prompt"] == benchmarks.build_prompt(first)
    monkeypatch.setenv(lm_eval_tasks.DATA_DIR_ENV, str(DATA_DIR))
    assert lm_eval_tasks.load_docs("math500")["test"][0] == docs[0]
    # the metadata wins over the environment; a folder without the file says where to point
    with pytest.raises(
        RuntimeError, match=r"cannot load math500 from data_dir=.*CLIPBENCH_DATA_DIR=../shared/data"
    ):
        lm_eval_tasks.load_docs("math500", data_dir=str(tmp_path))
    monkeypatch.delenv(lm_eval_tasks.DATA_DIR_ENV)
    with pytest.raises(RuntimeError, match="cannot load math500 from the hub"):  # offline
        lm_eval_tasks.load_docs("math500")


# --- lm-eval's evaluator through the YAML task, on scripted generations -----------------------


def scripted_generations(golds: list[str], k: int) -> list[list[str]]:
    """Problem 0: 0 of k correct; 1: 2 of k; 2: all k; 3: half, and one answer outside \\boxed{}
    (the synthetic set has no fallbacks: it scores 0)."""

    def boxed(gold: str, right: bool) -> str:
        return f"1+1=2\n\\boxed{{{gold if right else int(gold) + 1}}}"

    plan = [0, 2, k, k // 2]
    out = [[boxed(g, j < n) for j in range(k)] for g, n in zip(golds, plan, strict=True)]
    out[3][-1] = f"The answer is {golds[3]}"
    return out


@pytest.fixture(scope="module")
def scripted_run():
    """``lm_eval.simple_evaluate`` on the shipped YAML task, through lm-eval's task manager, with an
    LM that answers from a script: (results, tracker, the scripted generations)."""
    pytest.importorskip("lm_eval")
    import lm_eval
    from lm_eval.api.model import LM
    from lm_eval.tasks import TaskManager

    k = benchmarks.get_spec("synthetic").k
    problems = benchmarks.load("synthetic", n=4)
    script = {
        f"{p.problem}\n": gens
        for p, gens in zip(problems, scripted_generations([p.answer for p in problems], k), strict=True)
    }

    class ScriptedLM(LM):
        def __init__(self):
            super().__init__()
            self.calls = Counter()

        def generate_until(self, requests, disable_tqdm=False):
            answers = []
            for request in requests:
                prompt = request.args[0]
                answers.append(script[prompt][self.calls[prompt]])
                self.calls[prompt] += 1
            return answers

        def loglikelihood(self, requests, disable_tqdm=False):
            raise NotImplementedError

        def loglikelihood_rolling(self, requests, disable_tqdm=False):
            raise NotImplementedError

    tracker = lm_eval_layout.tracker()
    with ev._global_rngs_restored():  # simple_evaluate reseeds the global RNGs other tests may use
        results = lm_eval.simple_evaluate(
            model=ScriptedLM(),
            tasks=[TASK],
            task_manager=TaskManager(include_path=str(lm_eval_tasks.YAML_DIR), include_defaults=False),
            limit=4,
            log_samples=True,
            evaluation_tracker=tracker,
        )
    return results, tracker, list(script.values())


@requires_lm_eval
def test_the_yaml_task_scores_through_lm_eval_as_clipbench_does(scripted_run):
    results, _, generations = scripted_run
    metrics = results["results"][TASK]
    # per problem 0/8, 2/8, 8/8, 4/8: avg@k = 1.75 / 4; pass@k = 3 / 4
    assert metrics["avg_at_k,verified"] == pytest.approx(0.4375)
    assert metrics["pass_at_k,verified"] == pytest.approx(0.75)
    # deviations from 0.4375: -0.4375, -0.1875, 0.5625, 0.0625; squares sum to 0.546875;
    # sample variance 0.546875 / 3, standard error sqrt(that) / sqrt(4)
    assert metrics["avg_at_k_stderr,verified"] == pytest.approx(math.sqrt(0.546875 / 3) / 2)
    assert results["n-samples"][TASK] == {"original": 500, "effective": 4}
    # clipbench's own scoring of the same verdicts gives the same numbers
    verdicts = [[r["correct"] for r in s["filtered_resps"][0]] for s in results["samples"][TASK]]
    assert verdicts == [[j < n for j in range(8)] for n in (0, 2, 8, 4)]
    ours = ev.score(verdicts)
    assert (ours["avg@k"], ours["pass@k"]) == (metrics["avg_at_k,verified"], metrics["pass_at_k,verified"])
    assert ours["avg@k_stderr"] == pytest.approx(metrics["avg_at_k_stderr,verified"])
    records = results["samples"][TASK][3]["filtered_resps"][0]
    assert records[-1]["status"] == "no_answer" and records[-1]["generation"] == generations[3][-1]


@requires_lm_eval
def test_the_layout_writer_replaces_the_previous_files_and_refuses_a_partial_write(scripted_run, tmp_path):
    results, tracker, _ = scripted_run
    out = tmp_path / "evals" / "base" / "synthetic.json"
    first = lm_eval_layout.write(out, results, tracker)
    folder = lm_eval_layout.folder(out)
    assert folder == tmp_path / "evals" / "base" / "synthetic.lm_eval"
    assert sorted(first) == ["results", f"samples_{TASK}"]
    assert re.fullmatch(f"results_{DATE}.json", first["results"].name)
    assert re.fullmatch(f"samples_{TASK}_{DATE}.jsonl", first[f"samples_{TASK}"].name)
    assert len(results["samples"][TASK]) == 4 and isinstance(results["samples"][TASK][0]["arguments"], list)

    (folder / "notes.txt").write_text("mine")
    second = lm_eval_layout.write(out, results, tracker)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["notes.txt", second["results"].name, second[f"samples_{TASK}"].name]
    )
    document = json.loads(second["results"].read_text())
    assert document["results"] == json.loads(json.dumps(results["results"]))

    # lm-eval's tracker only logs a warning when it cannot write: the writer checks
    class Silent(type(tracker)):
        def save_results_samples(self, task_name, samples):
            pass

    with pytest.raises(
        RuntimeError, match=r"samples_clipbench_synthetic_.*EvaluationTracker did not write it"
    ):
        lm_eval_layout.write(out, results, Silent())

    (tmp_path / "taken.lm_eval").write_text("")
    with pytest.raises(ValueError, match=r"taken\.lm_eval is a file"):
        lm_eval_layout.check_folder(tmp_path / "taken.json")


def test_sample_lines_are_counted_by_newline_bytes_not_unicode_line_breaks(tmp_path):
    """lm-eval writes JSON Lines with ensure_ascii=False: U+2028, U+2029 and U+0085 stay raw inside
    a record, and str.splitlines would count each as a line break (a seeded evaluation would then
    fail the same way on every retry)."""
    records = [{"resps": "a\u2028b"}, {"resps": "c\u2029d\x85e"}, {"resps": "plain"}]
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    assert len(path.read_text(encoding="utf-8").splitlines()) == 6  # what the check must not do
    assert lm_eval_layout.count_lines(path) == 3


@requires_lm_eval
def test_the_layout_is_what_lm_eval_writes_from_its_command_line(scripted_run, tmp_path):
    """The writer against what lm-eval's command line (lm_eval/_cli/run.py, 0.4.13) does with
    simple_evaluate's results: pop the samples, save the aggregate, then each task's samples."""
    results, tracker, _ = scripted_run
    ours = lm_eval_layout.write(tmp_path / "ours" / "synthetic.json", results, copy.deepcopy(tracker))
    cli_tracker = copy.deepcopy(tracker)
    cli_tracker.output_path = str(tmp_path / "cli")
    cli_results = copy.deepcopy(results)
    samples = cli_results.pop("samples")
    cli_tracker.save_results_aggregated(results=cli_results, samples=samples)
    for task in cli_results["configs"]:
        cli_tracker.save_results_samples(task_name=task, samples=samples[task])

    (cli_folder,) = (tmp_path / "cli").iterdir()  # the command line's folder named after the model
    cli, cli_samples = lm_eval_files(cli_folder)
    mine, my_samples = lm_eval_files(ours["results"].parent)
    assert "samples" not in mine and set(mine) == set(cli)
    for document in (mine, cli):
        document.pop("total_evaluation_time_seconds")
    assert mine == cli
    assert my_samples == cli_samples and len(my_samples) == 4


# --- the lm_eval command line against clipbench's evaluation ----------------------------------


@pytest.mark.slow  # ~45 s of CPU, 65-85 s of wall time on a busy 2-core machine: lm_eval's start-up
@requires_lm_eval  # indexes its thousands of built-in task files, whatever --tasks says
def test_the_lm_eval_cli_runs_the_yaml_task_as_clipbench_evaluates(tiny_dir, tmp_path):
    """Same model, same 4 problems, same decoding (k = 8 samples at temperature 1, seeded 0, batch
    32, 16 new tokens): the samples are identical, so are the scores. The random tiny model scores
    0 here (test_the_yaml_task_scores_... covers scores above 0 through the same YAML file)."""
    out = tmp_path / "evals" / "synthetic.json"
    summary = ev.evaluate(tiny_dir, "synthetic", out=out, limit=4, max_new_tokens=16)
    _, model_args = ev.lm_eval_model("hf", str(tiny_dir), seed=summary["seed"])
    device = model_args.pop("device")  # lm-eval's command line takes it as --device
    command = [sys.executable, "-m", "lm_eval", "--model", "hf"]
    command += ["--model_args", ",".join(f"{key}={value}" for key, value in model_args.items())]
    command += [
        "--device",
        device,
        "--batch_size",
        str(summary["batch_size"]),
        "--seed",
        str(summary["seed"]),
    ]
    command += ["--include_path", str(lm_eval_tasks.YAML_DIR), "--tasks", TASK, "--limit", "4"]
    command += ["--gen_kwargs", "max_gen_toks=16", "--output_path", str(tmp_path / "cli"), "--log_samples"]
    env = (
        os.environ | OFFLINE | {"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    )
    run = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]

    (cli_folder,) = (tmp_path / "cli").iterdir()  # lm-eval's folder named after the model path
    cli, cli_samples = lm_eval_files(cli_folder)
    ours, our_samples = lm_eval_files(lm_eval_layout.folder(out))

    # the scores: lm-eval's command line, clipbench's summary, and clipbench's lm-eval results agree
    metrics = cli["results"][TASK]
    assert metrics["avg_at_k,verified"] == summary["avg@k"]
    assert metrics["pass_at_k,verified"] == summary["pass@k"]
    assert metrics["avg_at_k_stderr,verified"] == summary["avg@k_stderr"]
    assert ours["results"] == cli["results"]
    # the samples: the same generations and verdicts, from the same docs and prompts
    records = read_jsonl(out.with_name("synthetic.samples.jsonl"))
    assert [g for line in cli_samples for g in line["resps"][0]] == [r["generation"] for r in records]
    verdicts = [ast.literal_eval(v) for line in cli_samples for v in line["filtered_resps"][0]]
    keys = ("generation", "correct", "status", "extracted")
    assert [{key: v[key] for key in keys} for v in verdicts] == [
        {key: r[key] for key in keys} for r in records
    ]
    assert [line["doc"] for line in cli_samples] == read_jsonl(out.with_name("synthetic.prompts.jsonl"))
    assert ours["task_hashes"] == cli["task_hashes"]

    # the layout: lm-eval's keys, at every level, but for the data source of the task config
    assert set(ours) == set(cli)
    for section in ("versions", "n-shot", "higher_is_better", "group_subtasks"):
        assert ours[section] == cli[section], section
    assert set(ours["config"]) == set(cli["config"])
    assert set(ours["n-samples"][TASK]) == set(cli["n-samples"][TASK]) == {"original", "effective"}
    assert set(cli["configs"][TASK]) - set(ours["configs"][TASK]) == {"custom_dataset"}
    assert set(ours["configs"][TASK]) - set(cli["configs"][TASK]) == {"dataset_path", "dataset_kwargs"}
    assert [set(line) for line in our_samples] == [set(line) for line in cli_samples]
    assert ours["n-samples"][TASK] == {"original": 4, "effective": 4}  # clipbench applies limit first
    assert cli["n-samples"][TASK] == {"original": 500, "effective": 4}
