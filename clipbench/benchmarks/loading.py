"""Loading a registered set as a list of :class:`~benchmarks.problem.Problem`.

Three sources, one row reader:

- ``data_dir`` given: the spec's local file (JSONL, or a ``.json`` array) is read as bytes, its
  sha256 is computed and compared with the known one (a mismatch emits
  :class:`DataIntegrityWarning`), and each row goes through :func:`row_to_problem`; a malformed
  row raises ValueError naming the file and its 1-based line number;
- ``data_dir=None``: ``datasets.load_dataset(hub_id, config, split=..., revision=...)`` (imported
  lazily: the offline path never needs ``datasets``), rows read with the spec's hub format;
- the ``synthetic`` set is generated (:mod:`benchmarks.synthetic`), no files involved.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from clipbench.benchmarks import synthetic
from clipbench.benchmarks.extraction import clean_gold, format_number, gold_from_hashes, last_boxed
from clipbench.benchmarks.problem import Problem
from clipbench.benchmarks.registry import BenchmarkSpec, RowFormat, get_spec


class DataIntegrityWarning(UserWarning):
    """A local data file's sha256 differs from the one recorded in the registry."""


@dataclass(frozen=True)
class LoadResult:
    """Problems plus where they came from: ``source`` is ``"local"``, ``"hub"`` or ``"generated"``.

    For local files ``path`` and ``sha256`` (computed on the bytes read) are set, and
    ``expected_sha256`` is the registry's; ``skipped`` lists ``(line, reason)`` of rows dropped by
    ``drop_empty_answers``.
    """

    name: str
    split: str
    source: str
    problems: list[Problem]
    path: Path | None = None
    sha256: str | None = None
    expected_sha256: str | None = None
    skipped: tuple[tuple[int, str], ...] = field(default=())

    @property
    def sha256_ok(self) -> bool | None:
        """True/False when both hashes are known, None otherwise."""
        if self.sha256 is None or self.expected_sha256 is None:
            return None
        return self.sha256 == self.expected_sha256


class _EmptyAnswer(ValueError):
    """A row whose gold field is null or blank (droppable when the spec allows it)."""


def _text_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return format_number(value)
    raise ValueError(f"expected a string or a number, got {type(value).__name__}")


def read_gold(value: Any, kind: str) -> str:
    """The cleaned gold string from a raw field value, read according to ``kind`` (see RowFormat)."""
    if value is None:
        raise _EmptyAnswer("answer is null")
    if kind == "value":
        raw = _text_value(value)
    elif kind == "last_boxed":
        raw = last_boxed(_text_value(value)) or ""
        if not raw:
            raise ValueError("no balanced \\boxed{...} in the solution")
    elif kind == "hashes":
        raw = gold_from_hashes(_text_value(value)) or ""
        if not raw:
            raise ValueError("no '#### ' answer line")
    elif kind == "list":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"expected a list of strings, got {value!r:.80}")
        raw = ", ".join(clean_gold(v) for v in value)
    else:
        raise ValueError(f"unknown gold kind {kind!r}")
    gold = clean_gold(raw)
    if not gold:
        raise _EmptyAnswer("answer is empty")
    return gold


def _optional_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, list):
        return "\n\n".join(str(v) for v in value)
    return str(value)


def row_to_problem(row: Any, fmt: RowFormat, index: int) -> Problem:
    """One source row -> Problem. Raises ValueError (without location; callers add it)."""
    if not isinstance(row, Mapping):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    for name in (fmt.problem, fmt.answer):
        if name not in row:
            raise ValueError(f"missing field {name!r} (row has {sorted(row)})")
    problem = row[fmt.problem]
    if not isinstance(problem, str) or not problem.strip():
        raise ValueError(f"field {fmt.problem!r} is not a non-empty string")
    context = _optional_text(row.get(fmt.context)) if fmt.context else None
    if context:
        problem = f"{context}\n\n{problem}"
    raw_id = row.get(fmt.id) if fmt.id else None
    return Problem(
        id=str(index) if raw_id is None else str(raw_id),
        problem=problem,
        answer=read_gold(row[fmt.answer], fmt.gold),
        solution=_optional_text(row.get(fmt.solution)) if fmt.solution else None,
    )


def problems_from_rows(
    rows: Iterable[tuple[int, Any]],
    fmt: RowFormat,
    where: Callable[[int], str],
    drop_empty_answers: bool = False,
) -> tuple[list[Problem], list[tuple[int, str]]]:
    """Read ``(location, row)`` pairs; errors name ``where(location)``. Returns (problems, skipped)."""
    problems: list[Problem] = []
    skipped: list[tuple[int, str]] = []
    for index, (location, row) in enumerate(rows):
        try:
            problems.append(row_to_problem(row, fmt, index))
        except _EmptyAnswer as exc:
            if not drop_empty_answers:
                raise ValueError(f"{where(location)}: {exc}") from None
            skipped.append((location, str(exc)))
        except ValueError as exc:
            raise ValueError(f"{where(location)}: {exc}") from None
    return problems, skipped


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def iter_jsonl(text: str, path: Path) -> Iterator[tuple[int, Any]]:
    """``(1-based line, object)`` for each non-blank line; bad JSON raises ValueError with path:line."""
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: invalid JSON ({exc.msg} at column {exc.colno})") from None


def iter_json_array(text: str, path: Path) -> Iterator[tuple[int, Any]]:
    """``(1-based line where the element starts, element)`` for a file holding one JSON array."""
    decoder = json.JSONDecoder()
    n = len(text)
    counted = [0, 1]  # (offset, line at that offset): lines are counted incrementally, not from 0

    def line_at(i: int) -> int:
        offset, line = counted
        counted[:] = [i, line + text.count("\n", offset, i)] if i >= offset else [i, _line_of(text, i)]
        return counted[1]

    def skip_ws(i: int) -> int:
        while i < n and text[i] in " \t\r\n":
            i += 1
        return i

    def fail(i: int, msg: str) -> ValueError:
        return ValueError(f"{path}:{line_at(i)}: invalid JSON array ({msg})")

    pos = skip_ws(0)
    if pos >= n or text[pos] != "[":
        raise fail(pos, "expected '['")
    pos = skip_ws(pos + 1)
    if pos < n and text[pos] == "]":
        return
    while True:
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise fail(exc.pos, exc.msg) from None
        yield line_at(pos), value
        pos = skip_ws(end)
        if pos < n and text[pos] == ",":
            pos = skip_ws(pos + 1)
        elif pos < n and text[pos] == "]":
            if skip_ws(pos + 1) != n:
                raise fail(pos + 1, "data after the closing ']'")
            return
        else:
            raise fail(pos, "expected ',' or ']'")


def read_local(path: Path) -> tuple[list[tuple[int, Any]], str]:
    """Rows (with 1-based line numbers) of a ``.jsonl`` or ``.json`` array file, and its sha256."""
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ValueError(f"{path}:{line}: not valid UTF-8") from None
    reader = iter_json_array if path.suffix == ".json" else iter_jsonl
    return list(reader(text, path)), digest


def _check_split(spec: BenchmarkSpec, split: str) -> None:
    if split not in spec.splits:
        raise ValueError(f"{spec.name} has no split {split!r}; splits: {spec.splits}")


def local_file(name: str, split: str | None, data_dir: str | Path) -> Path:
    """The local copy of ``name``/``split`` under ``data_dir``, without reading it: ValueError when
    the set has no local copy of that split, FileNotFoundError when the file is not there. The
    loader and the checks that run before any work (a run's config, a study's DAG) call this."""
    spec = get_spec(name)
    split = spec.default_split if split is None else split
    if split not in spec.local or spec.local_format is None:
        raise ValueError(
            f"{spec.name} has no local file for split {split!r}; local splits: {sorted(spec.local)}"
        )
    path = Path(data_dir) / spec.local[split].path
    if not path.is_file():
        raise FileNotFoundError(f"{spec.name}/{split}: {path} not found (data_dir={data_dir})")
    return path


def _load_local(spec: BenchmarkSpec, split: str, data_dir: Path) -> LoadResult:
    path = local_file(spec.name, split, data_dir)
    entry = spec.local[split]
    rows, digest = read_local(path)
    if entry.sha256 is not None and digest != entry.sha256:
        warnings.warn(
            f"{path}: sha256 {digest} differs from the known {entry.sha256}; "
            "results may not be comparable with the published copy",
            DataIntegrityWarning,
            stacklevel=3,
        )
    problems, skipped = problems_from_rows(
        rows, spec.local_format, lambda line: f"{path}:{line}", spec.drop_empty_answers
    )
    return LoadResult(spec.name, split, "local", problems, path, digest, entry.sha256, tuple(skipped))


def _load_hub(spec: BenchmarkSpec, split: str) -> LoadResult:
    hub = spec.hub
    if hub is None or split not in hub.splits:
        raise ValueError(f"{spec.name} has no hub source for split {split!r}; pass data_dir")
    import datasets  # lazy: only the online path needs it

    hub_split = hub.splits[split]
    dataset = datasets.load_dataset(hub.id, hub.config, split=hub_split, revision=hub.revision)
    label = f"{hub.id}" + (f" ({hub.config})" if hub.config else "") + f" split {hub_split!r}"
    problems, skipped = problems_from_rows(
        enumerate(dataset), hub.format, lambda i: f"{label} row {i}", spec.drop_empty_answers
    )
    return LoadResult(spec.name, split, "hub", problems, skipped=tuple(skipped))


def load_with_meta(
    name: str,
    data_dir: str | Path | None = None,
    split: str | None = None,
    *,
    n: int | None = None,
    seed: int | None = None,
    **generator_kwargs: Any,
) -> LoadResult:
    """Load ``name``/``split`` (default: the spec's ``default_split``, "test" for evaluation sets).

    ``n`` keeps the first ``n`` problems (for ``synthetic``: generates ``n``). ``seed`` and
    ``generator_kwargs`` (``min_steps``, ``max_steps``) only apply to the generated set.
    """
    spec = get_spec(name)
    split = spec.default_split if split is None else split
    _check_split(spec, split)
    if spec.generated:
        seed = 0 if seed is None else seed
        problems = synthetic.generate(n=n, split=split, seed=seed, **generator_kwargs)
        return LoadResult(name, split, "generated", problems)
    if seed is not None or generator_kwargs:
        raise ValueError(
            f"{name} is read from data, seed/{sorted(generator_kwargs)} only apply to 'synthetic'"
        )
    result = _load_local(spec, split, Path(data_dir)) if data_dir is not None else _load_hub(spec, split)
    if n is not None:
        result = replace(result, problems=result.problems[:n])
    return result


def load(
    name: str,
    data_dir: str | Path | None = None,
    split: str | None = None,
    **kwargs: Any,
) -> list[Problem]:
    """The problems of ``name``/``split``; see :func:`load_with_meta` for the arguments."""
    return load_with_meta(name, data_dir, split, **kwargs).problems
