"""The method registry: discovery of a new module, duplicate names, unknown names and fields,
and hyperparameter validation."""

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from clipbench import methods
from clipbench.methods import Method, base, hparam, register

ROOT = Path(__file__).resolve().parents[1]

NEW_METHOD = '''
"""A test rule: seq_ppo with its own name."""
from dataclasses import dataclass

from clipbench.methods import register
from clipbench.methods.base import LossOutput, Method, RolloutBatch, hparam, log_band, sequence_level_rule


@register("seq_ppo_copy")
@dataclass(frozen=True)
class SeqPPOCopy(Method):
    """Sequence PPO under another name."""

    level = "sequence"
    eps: float = hparam(0.1, help="half-width", gt=0, lt=1)

    def compute(self, batch: RolloutBatch) -> LossOutput:
        return sequence_level_rule(batch, batch.seq_log_ratio, *log_band(self.eps, self.eps))
'''


def copy_methods(tmp_path: Path) -> Path:
    """A copy of the clipbench package's methods folder (with the package's light __init__) under
    `tmp_path`, importable as `clipbench.methods` with PYTHONPATH=tmp_path."""
    (tmp_path / "clipbench").mkdir()
    shutil.copy(ROOT / "clipbench" / "__init__.py", tmp_path / "clipbench" / "__init__.py")
    target = tmp_path / "clipbench" / "methods"
    shutil.copytree(ROOT / "clipbench" / "methods", target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def run_python(code: str, path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(path)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=path)


def test_a_new_module_is_discovered(tmp_path):
    (copy_methods(tmp_path) / "seq_ppo_copy.py").write_text(NEW_METHOD)
    result = run_python(
        "from clipbench import methods; import torch; print(methods.available_methods()); "
        "m = methods.get_method('seq_ppo_copy', eps=0.2); "
        "print(m.loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1), torch.ones(1, 2)).loss.item())",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    names, loss = result.stdout.splitlines()
    assert "seq_ppo_copy" in names and "fspo" in names
    assert float(loss) == -1.0


def test_a_duplicate_name_in_a_new_module_fails_on_discovery(tmp_path):
    (copy_methods(tmp_path) / "impostor.py").write_text(NEW_METHOD.replace('"seq_ppo_copy"', '"gspo"'))
    result = run_python("from clipbench import methods; methods.available_methods()", tmp_path)
    assert result.returncode != 0
    # Both files named; not a copy (another class), so the fix is a new name.
    assert (
        "DuplicateMethodError: method name 'gspo' is already registered by clipbench.methods.gspo.GSPO (clipbench/methods/gspo.py); "
        "clipbench.methods.impostor.SeqPPOCopy (clipbench/methods/impostor.py) registers it again: "
        "give one of them another name in @register(...)"
    ) in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("copy", "first", "again"),
    [
        # Before: "method name 'fspo' is already registered by methods.fspo.FSPO;
        # methods.fspo_backup.FSPO must use another name" (no files, no hint it is a stray copy).
        ("fspo_backup.py", "fspo", "fspo_backup"),
        # A copy that sorts first registers the name first: still the copy that is named, not fspo.py
        # (before: "... registered by methods.a_copy.FSPO; methods.fspo.FSPO must use another name").
        ("a_copy.py", "a_copy", "fspo"),
        # Named like nothing in particular: the same class source says which file is the copy.
        ("fspo2.py", "fspo", "fspo2"),
    ],
)
def test_a_stray_copy_of_a_method_file_is_named_with_the_fix(tmp_path, copy, first, again):
    folder = copy_methods(tmp_path)
    shutil.copy(folder / "fspo.py", folder / copy)
    result = run_python("from clipbench import methods", tmp_path)
    assert result.returncode != 0
    why = "the same class source"
    expected = (
        f"DuplicateMethodError: method name 'fspo' is already registered by clipbench.methods.{first}.FSPO "
        f"(clipbench/methods/{first}.py); clipbench.methods.{again}.FSPO (clipbench/methods/{again}.py) registers it again. "
        f"clipbench/methods/{copy} looks like a copy of clipbench/methods/fspo.py ({why}): delete it or move it out of "
        "clipbench/methods/, or, if it is a new rule, give it another name in @register(...)"
    )
    assert expected in result.stderr, result.stderr[-2000:]


def test_a_backup_named_file_with_edits_is_still_named_as_the_copy(tmp_path):
    folder = copy_methods(tmp_path)
    source = (folder / "fspo.py").read_text().replace("class FSPO(", "class FSPOOld(")
    (folder / "fspo_old.py").write_text(source)
    result = run_python("from clipbench import methods", tmp_path)
    assert (
        "clipbench/methods/fspo_old.py looks like a copy of clipbench/methods/fspo.py (its file name)"
        in result.stderr
    ), result.stderr


def test_modules_that_register_nothing_or_are_not_module_names_are_ignored(tmp_path):
    folder = copy_methods(tmp_path)
    (folder / "notes.py").write_text('"""Scratch notes: registers nothing."""\nTHRESHOLD = 0.1\n')
    (folder / "helpers.py").write_text(
        "from clipbench.methods.base import masked_mean\n\ndef twice(x):\n    return 2 * x\n"
    )
    # A file manager's copy: not an importable module name, skipped with a warning naming it.
    shutil.copy(folder / "fspo.py", folder / "fspo copy.py")
    shutil.copy(folder / "fspo.py", folder / "fspo.py.orig")  # not a .py module at all
    result = run_python(
        "import warnings; warnings.simplefilter('always'); from clipbench import methods; import sys; "
        "print(methods.available_methods()); print(sorted(m for m in sys.modules if m.startswith('clipbench.methods.')))",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    names, modules = result.stdout.splitlines()
    assert names == str(methods.available_methods())  # the helper modules registered nothing
    assert "'clipbench.methods.notes'" in modules and "'clipbench.methods.helpers'" in modules
    assert "clipbench/methods/fspo copy.py: skipped, 'fspo copy' is not a Python module name" in result.stderr
    assert result.stderr.count("is not a Python module name") == 1, result.stderr
    assert "notes" not in result.stderr and "helpers" not in result.stderr, result.stderr


def test_a_module_whose_import_fails_is_named(tmp_path):
    (copy_methods(tmp_path) / "broken.py").write_text("import not_a_package_anywhere\n")
    result = run_python("from clipbench import methods", tmp_path)
    assert result.returncode != 0
    assert (
        "ImportError: clipbench/methods/broken.py: importing it failed: "
        "ModuleNotFoundError: No module named 'not_a_package_anywhere'"
    ) in result.stderr, result.stderr


@pytest.mark.parametrize("name", ["naïve", "a-b", "a b", "../x", "1abc", ""])
def test_method_names_are_ascii_identifiers(name):
    with pytest.raises(ValueError, match="must be a Python identifier of ASCII letters, digits and _"):
        register(name)


def test_duplicate_name_raises():
    with pytest.raises(ValueError, match="'ppo' is already registered"):

        @register("ppo")
        @dataclass(frozen=True)
        class AnotherPPO(Method):
            level = "token"

            def compute(self, batch):
                raise NotImplementedError


def test_registration_requires_a_frozen_dataclass_with_documented_fields():
    with pytest.raises(TypeError, match="frozen"):

        @register("not_frozen")
        @dataclass
        class NotFrozen(Method):
            level = "token"

            def compute(self, batch):
                raise NotImplementedError

    with pytest.raises(TypeError, match="hparam"):

        @register("undocumented")
        @dataclass(frozen=True)
        class Undocumented(Method):
            level = "token"
            eps: float = 0.2

            def compute(self, batch):
                raise NotImplementedError

    with pytest.raises(TypeError, match="level"):

        @register("no_level")
        @dataclass(frozen=True)
        class NoLevel(Method):
            def compute(self, batch):
                raise NotImplementedError

    with pytest.raises(TypeError, match="subclass of clipbench.methods.Method"):
        register("plain")(object)
    assert not {"not_frozen", "undocumented", "no_level", "plain"} & set(methods.available_methods())


def test_a_registered_class_is_usable_and_can_be_removed():
    @register("tmp_rule")
    @dataclass(frozen=True)
    class TmpRule(Method):
        level = "sequence"
        eps: float = hparam(0.1, help="half-width", gt=0, lt=1)

        def compute(self, batch):
            return methods.sequence_level_rule(
                batch, batch.seq_log_ratio, *methods.log_band(self.eps, self.eps)
            )

    try:
        assert methods.get_method("tmp_rule").name == "tmp_rule"
    finally:
        methods._REGISTRY.pop("tmp_rule")


def test_unknown_method_lists_the_available_ones():
    with pytest.raises(
        ValueError,
        match=re.escape(f"unknown method 'fspo2'; available: {', '.join(methods.available_methods())}"),
    ):
        methods.get_method("fspo2")


def test_unknown_hyperparameter_is_named():
    with pytest.raises(
        ValueError,
        match=r"method 'gspo' has no hyperparameter 'c_low'; its hyperparameters: eps_low, eps_high",
    ):
        methods.get_method("gspo", c_low=0.1)


@pytest.mark.parametrize(
    ("name", "overrides", "message"),
    [
        ("ppo", {"eps_low": 1.5}, r"ppo.eps_low=1.5: must be in \(0, 1\)"),
        ("ppo", {"eps_high": 0}, r"ppo.eps_high=0: must be in \(0, 1\)"),
        ("grpo", {"eps_low": "0.2"}, r"grpo.eps_low='0.2': must be a number"),
        ("gspo", {"eps_low": float("nan")}, r"gspo.eps_low=nan: must be finite"),
        ("fspo", {"c_high": float("inf")}, r"fspo.c_high=inf: must be finite"),
        ("fspo", {"c_low": -1.0}, r"fspo.c_low=-1.0: must be in \(0, inf\)"),
        ("fspo", {"drift": "ema"}, r"fspo.drift='ema': must be one of 'none', 'kl'"),
        ("seq_ppo", {"eps_low": True}, r"seq_ppo.eps_low=True: must be a number"),
    ],
)
def test_invalid_hyperparameters_name_field_and_value(name, overrides, message):
    with pytest.raises(ValueError, match=message):
        methods.get_method(name, **overrides)


def test_ints_are_accepted_for_floats_and_methods_are_frozen():
    rule = methods.get_method("fspo", c_low=1)
    assert rule.c_low == 1.0 and isinstance(rule.c_low, float)
    with pytest.raises(AttributeError):
        rule.c_low = 2.0  # type: ignore[misc]
    assert rule.hparams() == {"c_low": 1.0, "c_high": 0.03, "drift": "none"}


def test_every_rule_documents_itself():
    for name in methods.available_methods():
        cls = methods.get_method_class(name)
        module = sys.modules[cls.__module__]
        assert module.__doc__ and cls.__doc__, name
        assert "arXiv" in module.__doc__ + cls.__doc__, f"{name}: cite the paper"
        text = cls.describe()
        assert text.startswith(f"{name} ({cls.level} level)")
        # what its clip records count: its own definition where the clip removes no gradient
        assert text.splitlines()[1] == f"  clip records: {cls.clip_records_meaning()}"
        if name in ("cispo", "sapo", "gmpo"):
            assert cls.clip_records_meaning() != base.CLIP_RECORDS_MEANING[cls.level], name
            assert "seq_clip" in cls.clip_records_meaning()
        for field in dataclasses.fields(cls):
            assert f"  {field.name} = " in text


def test_the_documented_example_is_a_working_rule():
    # docs/methods.md's "add a rule" example must be a working module.
    page = (ROOT / "docs" / "methods.md").read_text()
    start = page.index("```python\n# clipbench/methods/my_rule.py") + len("```python\n")
    example = page[start : page.index("```", start)]
    namespace: dict = {}
    try:
        exec(compile(textwrap.dedent(example), "docs/methods.md example", "exec"), namespace)
        assert "my_rule" in methods.available_methods()
    finally:
        methods._REGISTRY.pop("my_rule", None)


def test_rules_and_sets_import_nothing_else_from_the_package():
    # The bottom floor: the rules and the evaluation sets stand alone (installed under the
    # clipbench namespace, so no top-level `methods` or `benchmarks` can clash with another install).
    code = (
        "import sys, clipbench.methods, clipbench.benchmarks; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('clipbench', 'methods', 'benchmarks')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    loaded = eval(result.stdout)
    outside = [
        m
        for m in loaded
        if m != "clipbench" and not m.startswith(("clipbench.methods", "clipbench.benchmarks"))
    ]
    assert not outside, outside
    assert "clipbench.methods.fspo" in loaded and "clipbench.benchmarks.verifier" in loaded


def test_clipbench_imports_without_trl(tmp_path):
    """TRL is an optional backend (pip install -e ".[trl]"): with trl unimportable, the package,
    its CLI, the native trainer and the TRL integration module itself import; only building the
    TRL trainer needs trl, and says how to install it."""
    code = (
        "import sys; sys.modules['trl'] = None\n"  # `import trl` now raises ImportError
        "import clipbench, clipbench.cli, clipbench.trainer, clipbench.report, clipbench.integrations.trl as b\n"
        "assert 'trl' not in {m.split('.')[0] for m in sys.modules if sys.modules[m] is not None}\n"
        "try:\n"
        "    b.trainer_class()\n"
        "except ImportError as err:\n"
        "    print(err)\n"
        # `clipbench train` of a trl run: one line naming the extra, exit code 2
        'config = \'{"model": "m", "method": "grpo", "backend": "trl"}\'\n'
        "print(clipbench.cli.main(['train', '--config-json', config, '--out', sys.argv[1]]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "run")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "2" and result.stderr == (
        "clipbench train: error: backend trl needs trl (import of trl halted; None in sys.modules); "
        'install it with: pip install -e ".[trl]"\n'
    ), result.stderr
    assert (
        'backend trl needs trl (import of trl halted; None in sys.modules); install it with: pip install -e ".[trl]"'
        in result.stdout
    ), result.stdout
