"""The synthetic arithmetic set: determinism, split disjointness, difficulty, answers and lengths."""

from __future__ import annotations

import ast
import operator
from collections import Counter

import pytest

from clipbench import benchmarks
from clipbench.benchmarks import synthetic


def _evaluate(expression: str) -> int:
    """Evaluate +, -, * on integers (an independent check of the worked solutions; no eval())."""
    ops = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}

    def walk(node: ast.AST) -> int:
        if isinstance(node, ast.BinOp) and type(node.op) in ops:
            return ops[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        raise ValueError(f"unexpected node {ast.dump(node)}")

    return walk(ast.parse(expression, mode="eval").body)


def _expression(problem: benchmarks.Problem) -> str:
    assert problem.problem.startswith(synthetic.PREFIX)
    return problem.problem[len(synthetic.PREFIX) :]


@pytest.fixture(scope="module")
def train():
    return benchmarks.load("synthetic", split="train", n=3000, seed=0)


@pytest.fixture(scope="module")
def test():
    return benchmarks.load("synthetic", split="test", n=500, seed=0)


@pytest.fixture(scope="module")
def ood():
    return benchmarks.load("synthetic", split="test_ood", n=300, seed=0)


def test_deterministic_for_a_seed(train):
    assert benchmarks.load("synthetic", split="train", n=3000, seed=0) == train
    other = benchmarks.load("synthetic", split="train", n=3000, seed=1)
    assert other != train
    assert benchmarks.load("synthetic", split="train", n=100, seed=0) == train[:100]


def test_default_split_and_sizes():
    result = benchmarks.load_with_meta("synthetic", n=10)
    assert (result.split, result.source, len(result.problems)) == ("test", "generated", 10)
    assert len(benchmarks.load("synthetic", split="test")) == synthetic.SPLITS["test"][2]
    with pytest.raises(ValueError, match="splits"):
        benchmarks.load("synthetic", split="validation")


def test_problems_are_distinct_within_a_split(train, test, ood):
    for problems in (train, test, ood):
        assert len({p.problem for p in problems}) == len(problems)
        assert len({p.id for p in problems}) == len(problems)


def test_train_and_test_never_share_a_problem(train, test, ood):
    train_exprs = {_expression(p) for p in train}
    for held_out in (test, ood):
        exprs = {_expression(p) for p in held_out}
        assert not train_exprs & exprs
        assert all(synthetic.is_held_out(e) for e in exprs)
    assert not any(synthetic.is_held_out(e) for e in train_exprs)  # the property behind disjointness
    # and across seeds: other train seeds still never produce a held-out problem
    other = benchmarks.load("synthetic", split="train", n=2000, seed=7)
    assert not {_expression(p) for p in other} & {_expression(p) for p in test}


def test_held_out_fraction_is_as_documented():
    import random

    rng = random.Random(0)
    exprs = {synthetic.expression(*synthetic.random_chain(rng, rng.randint(1, 16))) for _ in range(5000)}
    share = sum(synthetic.is_held_out(e) for e in exprs) / len(exprs)
    assert abs(share - synthetic.HELD_OUT_FRACTION) < 0.03


def test_step_counts_span_the_range_and_ood_is_harder(train, test, ood):
    train_steps = Counter(synthetic.num_steps(p) for p in train)
    lo, hi = synthetic.SPLITS["train"][:2]
    assert set(train_steps) == set(range(lo, hi + 1))
    # Roughly uniform, except 1-step problems: single-digit values allow only ~80 distinct ones.
    assert min(v for k, v in train_steps.items() if k > 1) > len(train) / (hi - lo + 1) / 2
    assert train_steps[1] >= 50
    assert {synthetic.num_steps(p) for p in test} <= set(range(lo, hi + 1))
    ood_steps = [synthetic.num_steps(p) for p in ood]
    assert min(ood_steps) > max(train_steps)
    assert sum(ood_steps) / len(ood_steps) > sum(train_steps.elements()) / len(train)
    lengths = sorted(len(p.solution) for p in train)
    assert lengths[0] <= 20 and lengths[-1] >= 5 * lengths[0]  # short and long responses both exist


def test_difficulty_knob():
    easy = benchmarks.load("synthetic", split="train", n=200, min_steps=1, max_steps=2)
    assert {synthetic.num_steps(p) for p in easy} == {1, 2}
    with pytest.raises(ValueError, match="min_steps"):
        synthetic.generate(n=1, min_steps=3, max_steps=2)
    with pytest.raises(ValueError, match="distinct"):
        synthetic.generate(n=5000, split="test", min_steps=1, max_steps=1)


def test_solutions_are_correct_small_and_boxed(train, test, ood):
    for p in train + test + ood:
        answer = _evaluate(_expression(p))
        assert p.answer == str(answer) and 0 <= answer <= synthetic.MAX_VALUE
        assert p.solution.endswith(f"\\boxed{{{p.answer}}}")
        value = None
        for line in p.solution.splitlines()[:-1]:  # each step is "a op b=c" with values in range
            left, result = line.split("=")
            assert _evaluate(left) == int(result) and 0 <= int(result) <= synthetic.MAX_VALUE
            assert value is None or left.startswith(str(value))
            value = int(result)
        assert value == answer
        assert set(p.problem + p.solution) <= synthetic.ALPHABET


def test_every_gold_self_verifies(train, test, ood):
    pytest.importorskip("math_verify", reason="the verifier needs math-verify (the 'eval' extra)")
    problems = train[:500] + test + ood
    predictions = [p.solution for p in problems] + [f"\\boxed{{{int(p.answer) + 1}}}" for p in test]
    golds = [p.answer for p in problems] + [p.answer for p in test]
    with benchmarks.VerifierPool(workers=2) as pool:
        verdicts = pool.verify(predictions, golds, fallbacks=())
    assert all(v.status == "ok" for v in verdicts)
    assert [v.correct for v in verdicts] == [True] * len(problems) + [False] * len(test)


def test_prompt_template_keeps_the_alphabet_small(test):
    spec = benchmarks.get_spec("synthetic")
    prompt = benchmarks.build_prompt(test[0], template=spec.prompt_template)
    assert prompt == test[0].problem + "\n"
    assert set(prompt) <= synthetic.ALPHABET
    assert spec.fallbacks == ()


def test_a_huge_or_negative_n_is_refused_before_generating():
    """n = 10**9 would fill memory for minutes; it is refused at once, naming the cap."""
    for n in (synthetic.MAX_N + 1, 10**9, -1):
        with pytest.raises(ValueError, match="MAX_N"):
            benchmarks.load("synthetic", split="train", n=n)
    assert len(synthetic.generate(n=0)) == 0
