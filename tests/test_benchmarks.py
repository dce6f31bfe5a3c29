"""Registry, loaders (local files, hub path, integrity checks), answer extraction and prompts."""

from __future__ import annotations

import json
import shutil
import sys
import types
import warnings
from pathlib import Path

import pytest

from clipbench import benchmarks
from clipbench.benchmarks import extraction, loading
from clipbench.benchmarks.registry import REGISTRY

DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"
requires_data = pytest.mark.skipif(
    not DATA_DIR.is_dir(), reason=f"offline data copies not found at {DATA_DIR} (see DESIGN.md)"
)

EXPECTED_ROWS = {
    ("math500", "test"): 500,
    ("aime24", "test"): 30,
    ("aime25", "test"): 30,
    ("amc23", "test"): 40,
    ("minerva_math", "test"): 272,
    ("olympiadbench", "test"): 675,
    ("gsm8k", "test"): 1319,
    ("gsm8k", "train"): 7473,
    ("math_train", "train"): 7470,  # 7474 rows, 2 null + 2 empty answers dropped
}
EVAL_SETS = [name for (name, split) in EXPECTED_ROWS if split == "test"]

# Golds that math-verify cannot turn into an expression: they only match a prediction with the
# same text (after math-verify's normalisation). Pinned so a parser or data change is noticed.
TEXT_ONLY_GOLDS = {
    ("minerva_math", "27"),  # an equation with differentials: \frac{dM}{dt}=...
    ("minerva_math", "269"),  # a list of symbols: E_{1},E_{2}
    ("olympiadbench", "1782"),  # m_{\max }=n^{2}-n-1 (\max in a subscript)
    ("olympiadbench", "2045"),  # t(0,4] (the source dropped "\in")
}


# -- registry --------------------------------------------------------------------------------------


def test_available_lists_every_set_sorted():
    names = benchmarks.available()
    assert names == sorted(names)
    for name in [
        "aime24",
        "aime25",
        "math500",
        "amc23",
        "minerva_math",
        "olympiadbench",
        "gsm8k",
        "synthetic",
    ]:
        assert name in names


def test_unknown_name_raises_listing_available():
    with pytest.raises(ValueError, match="available: .*math500"):
        benchmarks.load("nope")
    with pytest.raises(ValueError, match="aime24"):
        benchmarks.get_spec("nope")


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_spec_is_complete(name):
    spec = benchmarks.get_spec(name)
    assert isinstance(spec, benchmarks.BenchmarkSpec)
    assert spec.k >= 1 and spec.max_new_tokens > 0
    assert spec.default_split in spec.splits
    extraction.check_fallbacks(spec.fallbacks)
    assert "{problem}" in spec.prompt_template
    if not spec.generated:
        assert spec.hub is not None and spec.hub.id and spec.hub.revision
        assert set(spec.local) <= set(spec.splits)
        for entry in spec.local.values():
            assert len(entry.sha256 or "") == 64 and entry.rows


def test_unknown_split_and_generator_arguments_are_rejected():
    with pytest.raises(ValueError, match="splits"):
        benchmarks.load("aime24", DATA_DIR, split="train")
    with pytest.raises(ValueError, match="synthetic"):
        benchmarks.load("aime24", DATA_DIR, seed=3)


# -- local files -----------------------------------------------------------------------------------


@requires_data
@pytest.mark.parametrize(("name", "split"), sorted(EXPECTED_ROWS))
def test_local_set_loads_with_expected_rows(name, split):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no integrity warning for the published copies
        result = benchmarks.load_with_meta(name, DATA_DIR, split)
    assert result.source == "local" and result.sha256_ok is True
    assert len(result.problems) == EXPECTED_ROWS[(name, split)]
    assert len({p.id for p in result.problems}) == len(result.problems)
    for p in result.problems:
        assert p.problem.strip() and p.answer.strip()
        assert p.answer == p.answer.strip() and "$" not in p.answer.replace("\\$", "")


@requires_data
def test_every_gold_answer_fits_well_inside_the_answer_length_cap():
    """A correct answer is never cut by MAX_ANSWER_CHARS: the cap is at least 4x the longest gold."""
    longest = max(
        len(p.answer) for name, split in EXPECTED_ROWS for p in benchmarks.load(name, DATA_DIR, split)
    )
    assert 4 * longest <= extraction.MAX_ANSWER_CHARS, longest


def test_an_answer_longer_than_the_cap_is_no_answer_whatever_it_holds():
    cap = extraction.MAX_ANSWER_CHARS
    at_cap = ("x+" * cap)[: cap - 1] + "x"
    assert len(at_cap) == cap
    assert extraction.extract_answer(f"so \\boxed{{{at_cap}}}") == (at_cap, "boxed")
    assert extraction.extract_answer(f"so \\boxed{{{at_cap}+}}") == (None, None)
    # a 250-term sum (about 1,900 characters) needs 4-5 s of CPU to parse, about the verifier's time
    # limit, where CPU-time jitter could decide its verdict: the cap refuses it by length instead
    slow_to_parse = "+".join(f"x_{{{i}}}" for i in range(250))
    assert extraction.extract_answer(f"\\boxed{{{slow_to_parse}}}") == (None, None)
    # a too-long box falls through to the fallbacks, which obey the same cap
    assert extraction.extract_answer(f"\\boxed{{{at_cap}+}} The answer is 7", ["answer_is"]) == (
        "7",
        "answer_is",
    )


@requires_data
def test_field_layouts_are_normalised():
    aime25 = benchmarks.load("aime25", DATA_DIR)
    assert aime25[0].answer == "70"  # JSON int
    amc = benchmarks.load("amc23", DATA_DIR)
    assert amc[0].answer == "27"  # JSON float 27.0
    assert all("." not in p.answer for p in amc if p.answer.replace(".", "").isdigit())
    minerva = {p.id: p for p in benchmarks.load("minerva_math", DATA_DIR)}
    assert minerva["0"].answer.startswith("1.6")  # last \boxed{} of the solution
    assert minerva["5"].answer == "\\arcsin(10/13)"  # written as numpy code in the source
    assert minerva["38"].answer == "-1/3"  # "-1./3" in the source
    gsm = benchmarks.load("gsm8k", DATA_DIR)
    assert gsm[0].answer == "18"
    assert all("," not in p.answer for p in gsm)  # 1,000 -> 1000
    assert any(p.answer == "114200" for p in gsm)
    olympiad = {p.id: p for p in benchmarks.load("olympiadbench", DATA_DIR)}
    assert olympiad["1606"].answer == "2"
    assert all(p.solution for p in olympiad.values())


@requires_data
def test_math_train_drops_and_records_empty_answers():
    result = benchmarks.load_with_meta("math_train", DATA_DIR)
    assert result.split == "train"
    assert [reason for _, reason in result.skipped] == ["answer is null"] * 2 + ["answer is empty"] * 2
    assert [line for line, _ in result.skipped] == [5318, 6056, 31970, 31982]  # where each element starts


@requires_data
def test_n_keeps_the_first_problems():
    assert benchmarks.load("math500", DATA_DIR, n=7) == benchmarks.load("math500", DATA_DIR)[:7]


@requires_data
def test_sha256_mismatch_warns(tmp_path):
    target = tmp_path / "aime25" / "test.jsonl"
    target.parent.mkdir()
    shutil.copy(DATA_DIR / "aime25" / "test.jsonl", target)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert benchmarks.load_with_meta("aime25", tmp_path).sha256_ok  # an exact copy is fine
    target.write_text(target.read_text().replace('"answer": 70', '"answer": 71'))
    with pytest.warns(benchmarks.DataIntegrityWarning, match=r"test\.jsonl: sha256 [0-9a-f]{64} differs"):
        result = benchmarks.load_with_meta("aime25", tmp_path)
    assert result.sha256_ok is False and result.problems[0].answer == "71"


def _write_aime25(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "aime25" / "test.jsonl"
    path.parent.mkdir(exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


GOOD_ROW = json.dumps({"problem": "1+1?", "answer": 2, "id": "0"})


@pytest.mark.parametrize(
    ("bad_row", "message"),
    [
        ('{"problem": "1+1?", "answer": 2', "invalid JSON"),
        (json.dumps({"problem": "1+1?", "id": "1"}), "missing field 'answer'"),
        (json.dumps({"problem": "1+1?", "answer": "  ", "id": "1"}), "answer is empty"),
        (json.dumps({"problem": "1+1?", "answer": None, "id": "1"}), "answer is null"),
        (json.dumps({"problem": "", "answer": 2, "id": "1"}), "'problem'"),
        (json.dumps([1, 2]), "JSON object"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, bad_row, message):
    path = _write_aime25(tmp_path, [GOOD_ROW, "", GOOD_ROW, bad_row, GOOD_ROW])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", benchmarks.DataIntegrityWarning)
        with pytest.raises(ValueError, match=rf"{path}:4: .*{message}"):
            benchmarks.load("aime25", tmp_path)


def test_malformed_json_array_names_line(tmp_path):
    path = tmp_path / "math_train" / "train.json"
    path.parent.mkdir()
    row = '  {\n    "problem": "p",\n    "answer": "1"\n  }'
    path.write_text("[\n" + row + ",\n" + row + ',\n  {\n    "problem": "p",\n    "answer" 1\n  }\n]')
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", benchmarks.DataIntegrityWarning)
        with pytest.raises(ValueError, match=rf"{path}:12: invalid JSON array"):
            benchmarks.load("math_train", tmp_path)
        path.write_text("[\n" + row + ",\n" + row.replace('"answer": "1"', '"answr": "1"') + "\n]")
        with pytest.raises(ValueError, match=rf"{path}:6: missing field 'answer'"):
            benchmarks.load("math_train", tmp_path)


def test_missing_local_file_is_explicit(tmp_path):
    with pytest.raises(FileNotFoundError, match="aime24/test.jsonl"):
        benchmarks.load("aime24", tmp_path)


# -- hub path (no network: datasets.load_dataset is replaced) ----------------------------------------


def _raw_gold(kind: str):
    return {"value": 2, "last_boxed": "So \\boxed{2}.", "hashes": "1+1=2\n#### 2", "list": ["$2$"]}[kind]


@pytest.mark.parametrize("name", [n for n in sorted(REGISTRY) if REGISTRY[n].hub is not None])
def test_hub_path_calls_load_dataset_with_spec_and_reads_hub_rows(monkeypatch, name):
    spec = benchmarks.get_spec(name)
    fmt, calls = spec.hub.format, []

    def fake_load_dataset(path, name=None, *, split, revision):
        calls.append((path, name, split, revision))
        return [{fmt.problem: "What is 1+1?", fmt.answer: _raw_gold(fmt.gold)}]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=fake_load_dataset))
    result = benchmarks.load_with_meta(name)
    hub_split = spec.hub.splits[spec.default_split]
    assert calls == [(spec.hub.id, spec.hub.config, hub_split, spec.hub.revision)]
    assert result.source == "hub"
    assert [(p.problem, p.answer) for p in result.problems] == [("What is 1+1?", "2")]


def test_hub_row_errors_name_the_dataset_and_row(monkeypatch):
    rows = [{"Problem": "p", "Answer": 1}, {"Problem": "p"}]
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=lambda *a, **k: rows))
    with pytest.raises(ValueError, match="Maxwell-Jia/AIME_2024 split 'train' row 1: missing field 'Answer'"):
        benchmarks.load("aime24")


@requires_data
def test_hub_reader_through_real_datasets_json_builder(monkeypatch, tmp_path):
    """The online code path, end to end through `datasets`, fed from the local GSM8K copy."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    datasets = pytest.importorskip("datasets")
    real_load = datasets.load_dataset

    def from_local(path, name=None, *, split, revision):
        assert (path, name, split) == ("openai/gsm8k", "main", "test")
        local = DATA_DIR / "gsm8k" / "test.jsonl"
        return real_load("json", data_files=str(local), split="train", cache_dir=str(tmp_path))

    monkeypatch.setattr(datasets, "load_dataset", from_local)
    assert benchmarks.load("gsm8k") == benchmarks.load("gsm8k", DATA_DIR)


# -- gold and answer extraction ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so \\boxed{27}.", "27"),
        ("\\boxed{\\frac{1}{2}} then \\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}"),
        ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),  # escaped braces are not groups
        ("\\boxed{\\left\\{ x \\right.}", "\\left\\{ x \\right."),
        ("\\fbox{5}", "5"),
        ("\\boxed 5$", "5"),
        ("\\boxed{7} ... put your answer within \\boxed{}.", "7"),  # empty box skipped
        ("\\boxed{7} and a truncated \\boxed{\\frac{1", "7"),  # unclosed box skipped
        ("\\boxed{", None),
        ("no box here", None),
        ("\\boxedx{3}", None),
    ],
)
def test_last_boxed(text, expected):
    assert extraction.last_boxed(text) == expected


@pytest.mark.parametrize(
    ("text", "fallbacks", "expected"),
    [
        (
            "The final answer is $\\frac{1}{2}$. I hope it is correct.",
            ("answer_is",),
            ("\\frac{1}{2}", "answer_is"),
        ),
        ("Answer: 27.", ("answer_is",), ("27", "answer_is")),
        ("the answer is 12\nmore text", ("answer_is",), ("12", "answer_is")),
        ("He pays 3 + 4 = 7 dollars\n#### 1,000", ("hashes",), ("1000", "hashes")),
        ("so 2, then 1,234.5 total", ("last_number",), ("1234.5", "last_number")),
        ("so 2, then 1,234.5 total", (), (None, None)),
        ("Answer: 3, \\boxed{4}", ("answer_is",), ("4", "boxed")),
        ("\\boxed{" + "1" * 3000 + "}", (), (None, None)),  # longer than MAX_ANSWER_CHARS
    ],
)
def test_extract_answer(text, fallbacks, expected):
    assert extraction.extract_answer(text, fallbacks) == expected


def test_extraction_is_linear_on_huge_inputs():
    junk = "\\boxed{" * 50_000 + "{" * 50_000 + "\\boxed{1}" + "}" * 10
    assert extraction.extract_answer(junk, ("answer_is", "last_number"))[0] == "1"
    assert extraction.extract_answer("The answer is " * 20_000, ("answer_is",)) == (None, None)
    assert extraction.extract_answer("1," * 50_000, ("last_number",))[0] == "1"


def test_unknown_fallback_is_rejected():
    with pytest.raises(ValueError, match="answer_is"):
        extraction.extract_answer("x", ("nope",))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("$69$,$84$", "69,84"),
        ("\\$32,\\!348", "\\$32,\\!348"),
        ("-1./3", "-1/3"),
        ("3.", "3"),
        ("1.\\overline{3}", "1.\\overline{3}"),
        ("np.arcsin(10/13)", "\\arcsin(10/13)"),
        ("1,000", "1000"),
        ("1,2", "1,2"),
        (" 27 ", "27"),
    ],
)
def test_clean_gold(raw, expected):
    assert extraction.clean_gold(raw) == expected


def test_read_gold_kinds():
    assert loading.read_gold(27.0, "value") == "27"
    assert loading.read_gold(0.5, "value") == "0.5"
    assert loading.read_gold("x \\boxed{a{b}c} y \\boxed{\\frac{1}{2}}", "last_boxed") == "\\frac{1}{2}"
    assert loading.read_gold(["$1$", "$2$"], "list") == "1, 2"
    with pytest.raises(ValueError, match="boxed"):
        loading.read_gold("no box", "last_boxed")
    with pytest.raises(ValueError):
        loading.read_gold(True, "value")


# -- prompts ---------------------------------------------------------------------------------------


def test_base_prompt():
    prompt = benchmarks.build_prompt(benchmarks.Problem("1", "What is $\\{1\\}$?", "1"))
    assert (
        prompt
        == "What is $\\{1\\}$?\nPlease reason step by step, and put your final answer within \\boxed{}."
    )
    assert (
        benchmarks.build_prompt("2+2", template=benchmarks.get_spec("synthetic").prompt_template) == "2+2\n"
    )


def test_chat_prompt_uses_the_tokenizer_template():
    class FakeTokenizer:
        def apply_chat_template(self, messages, **kwargs):
            self.call = (messages, kwargs)
            return "<user>" + messages[0]["content"] + "<assistant>"

    tok = FakeTokenizer()
    out = benchmarks.build_prompt("1+1?", tokenizer=tok, style="chat")
    assert out.startswith("<user>1+1?\nPlease reason step by step") and out.endswith("<assistant>")
    assert tok.call[1] == {"add_generation_prompt": True, "tokenize": False}
    assert tok.call[0][0]["role"] == "user"
    with pytest.raises(ValueError, match="tokenizer"):
        benchmarks.build_prompt("1+1?", style="chat")
    with pytest.raises(ValueError, match="style"):
        benchmarks.build_prompt("1+1?", style="nope")


# -- every gold verifies against itself ------------------------------------------------------------


@requires_data
def test_every_gold_answer_verifies_against_itself():
    pytest.importorskip("math_verify", reason="the verifier needs math-verify (the 'eval' extra)")
    problems = [(name, p) for name in EVAL_SETS for p in benchmarks.load(name, DATA_DIR)]
    with benchmarks.VerifierPool(workers=2) as pool:
        verdicts = pool.verify(
            [f"so \\boxed{{{p.answer}}}" for _, p in problems], [p.answer for _, p in problems]
        )
    failures = [
        (name, p.id, p.answer, v) for (name, p), v in zip(problems, verdicts, strict=True) if not v.correct
    ]
    assert failures == []
    text_only = {(name, p.id) for (name, p), v in zip(problems, verdicts, strict=True) if v.detail}
    assert text_only == TEXT_ONLY_GOLDS
