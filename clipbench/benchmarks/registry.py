"""The benchmark registry: one :class:`BenchmarkSpec` per evaluation (or training) set.

A spec says where a set lives (a Hugging Face hub dataset for users online, a file under
``data_dir`` for offline runs, or the seeded generator), how to read the problem and the gold
answer from a row of each source (:class:`RowFormat`: the layouts differ per set and between the
hub and the local copies), the sha256 of each known local file, the answer fallbacks the verifier
uses after ``\\boxed{}``, the prompt template, and the default ``k`` (samples per problem) and
``max_new_tokens`` for paper-scale runs (profiles override both).

Hub ids marked ``verified=True`` are the ones lm-eval 0.4.13's own tasks use; the others
(AMC23, Minerva, OlympiadBench, MATH train) could not be checked offline and are best guesses.
Every hub revision is ``"main"``: no commit could be resolved offline, so pin a commit sha in
``HubSource.revision`` before publishing numbers from the online path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from clipbench.benchmarks import synthetic
from clipbench.benchmarks.prompts import BASE_TEMPLATE

#: How a gold answer is read from its field (see ``benchmarks.loading.read_gold``).
GOLD_KINDS = ("value", "last_boxed", "hashes", "list")


@dataclass(frozen=True)
class RowFormat:
    """Field layout of one source's rows.

    ``gold``: ``"value"`` (a string or JSON number), ``"last_boxed"`` (the last balanced
    ``\\boxed{}`` of a solution text), ``"hashes"`` (GSM8K: after the last ``#### ``), ``"list"``
    (a list of strings joined with ``", "``). ``id``/``solution``/``context`` are optional fields:
    without ``id`` the 0-based row index is the id; ``context`` is prepended to the problem.
    """

    problem: str
    answer: str
    gold: str = "value"
    id: str | None = None
    solution: str | None = None
    context: str | None = None

    def __post_init__(self) -> None:
        if self.gold not in GOLD_KINDS:
            raise ValueError(f"RowFormat.gold={self.gold!r}; known: {list(GOLD_KINDS)}")


@dataclass(frozen=True)
class LocalFile:
    """A local copy: ``path`` relative to ``data_dir`` (``.jsonl``, or ``.json`` holding one array).

    ``sha256`` is the known hash of the file (a mismatch warns); ``rows`` the number of problems it
    yields (after dropped rows, see ``BenchmarkSpec.drop_empty_answers``).
    """

    path: str
    sha256: str | None = None
    rows: int | None = None


@dataclass(frozen=True)
class HubSource:
    """A Hugging Face hub dataset: ``datasets.load_dataset(id, config, split=..., revision=...)``."""

    id: str
    format: RowFormat
    splits: dict[str, str]  # our split name -> the hub's split name
    config: str | None = None
    revision: str = "main"
    verified: bool = False


@dataclass(frozen=True)
class BenchmarkSpec:
    """Everything the suite needs to know about one set."""

    name: str
    description: str
    hub: HubSource | None = None
    local: dict[str, LocalFile] = field(default_factory=dict)  # split -> file
    local_format: RowFormat | None = None
    generated: bool = False  # produced by benchmarks.synthetic, no files
    default_split: str = "test"
    k: int = 1
    max_new_tokens: int = 4096
    fallbacks: tuple[str, ...] = ("answer_is",)
    prompt_template: str = BASE_TEMPLATE
    drop_empty_answers: bool = False  # skip (and record) rows whose gold is null/empty

    @property
    def splits(self) -> list[str]:
        if self.generated:
            return sorted(synthetic.SPLITS)
        return sorted(set(self.local) | set(self.hub.splits if self.hub else ()))


_MATH_FALLBACKS = ("answer_is",)

_SPECS = [
    BenchmarkSpec(
        name="aime24",
        description="AIME 2024 I+II (30 problems, integer answers 0-999).",
        hub=HubSource(
            id="Maxwell-Jia/AIME_2024",
            splits={"test": "train"},
            format=RowFormat(problem="Problem", answer="Answer"),
            verified=True,
        ),
        local={
            "test": LocalFile(
                "aime24/test.jsonl", "af2b8bd2aa911b6333ad0df32f3ca05c7ae8ed10f1731f4372c8ae26990bf7ac", 30
            )
        },
        local_format=RowFormat(problem="problem", answer="answer", id="id", solution="solution"),
        k=32,
        max_new_tokens=8192,
        fallbacks=_MATH_FALLBACKS,
    ),
    BenchmarkSpec(
        name="aime25",
        description="AIME 2025 I+II (30 problems); the local copy stores answers as JSON ints.",
        hub=HubSource(
            id="math-ai/aime25",
            splits={"test": "test"},
            format=RowFormat(problem="problem", answer="answer"),
            verified=True,
        ),
        local={
            "test": LocalFile(
                "aime25/test.jsonl", "b4e273c02d3e7fe1b74b59eae768fc8230bfb0f79539890cb56f4361caac0331", 30
            )
        },
        local_format=RowFormat(problem="problem", answer="answer", id="id"),
        k=32,
        max_new_tokens=8192,
        fallbacks=_MATH_FALLBACKS,
    ),
    BenchmarkSpec(
        name="amc23",
        description="AMC 12 2023 A/B (40 problems); the local copy stores answers as JSON floats (27.0).",
        # Unverified: no lm-eval task; id and fields could not be checked offline.
        hub=HubSource(
            id="math-ai/amc23",
            splits={"test": "test"},
            format=RowFormat(problem="question", answer="answer"),
            verified=False,
        ),
        local={
            "test": LocalFile(
                "amc23/test.jsonl", "43707e1ca784602d8479de24ee8ce36609dbebc46dd152b0b12a46611aa898a4", 40
            )
        },
        local_format=RowFormat(problem="problem", answer="answer", id="id"),
        k=16,
        max_new_tokens=8192,
        fallbacks=_MATH_FALLBACKS,
    ),
    BenchmarkSpec(
        name="math500",
        description="MATH-500 (the PRM800K test subset of Hendrycks MATH).",
        hub=HubSource(
            id="HuggingFaceH4/MATH-500",
            splits={"test": "test"},
            format=RowFormat(problem="problem", answer="answer", id="unique_id", solution="solution"),
            verified=True,
        ),
        local={
            "test": LocalFile(
                "math500/test.jsonl", "35dc41080a3680858b27fa7e0533d2d547825316fc5dafe5d316f4ccc5a06132", 500
            )
        },
        local_format=RowFormat(problem="problem", answer="answer", id="unique_id", solution="solution"),
        k=4,
        max_new_tokens=4096,
        fallbacks=_MATH_FALLBACKS,
    ),
    BenchmarkSpec(
        name="minerva_math",
        description="Minerva OCWCourses (272 problems); gold = last \\boxed{} of the solution.",
        # Unverified: no lm-eval task for this set; id and fields could not be checked offline.
        hub=HubSource(
            id="math-ai/minervamath",
            splits={"test": "test"},
            format=RowFormat(problem="question", answer="answer"),
            verified=False,
        ),
        local={
            "test": LocalFile(
                "minerva_math/test.jsonl",
                "0e656b430d3a0a1dab6aa853f453ba3805e28e2cabe4fc72486a897cc09d8ba2",
                272,
            )
        },
        local_format=RowFormat(
            problem="problem", answer="solution", gold="last_boxed", id="idx", solution="solution"
        ),
        k=4,
        max_new_tokens=4096,
        fallbacks=_MATH_FALLBACKS,
    ),
    BenchmarkSpec(
        name="olympiadbench",
        description="OlympiadBench OE_TO_maths_en_COMP (675 problems); gold = final_answer list joined.",
        # Unverified: no lm-eval task; id, config and fields could not be checked offline.
        hub=HubSource(
            id="Hothan/OlympiadBench",
            config="OE_TO_maths_en_COMP",
            splits={"test": "train"},
            format=RowFormat(
                problem="question", answer="final_answer", gold="list", id="id", context="context"
            ),
            verified=False,
        ),
        local={
            "test": LocalFile(
                "olympiadbench/test.jsonl",
                "bb8c1e38a16ea9eacb77530315a674d883f267fbff79183effc53681b4fcc416",
                675,
            )
        },
        local_format=RowFormat(
            problem="question",
            answer="final_answer",
            gold="list",
            id="id",
            solution="solution",
            context="context",
        ),
        k=4,
        max_new_tokens=4096,
        fallbacks=_MATH_FALLBACKS,
    ),
    BenchmarkSpec(
        name="gsm8k",
        description="GSM8K (test 1319, train 7473); gold follows '#### ', thousands separators removed.",
        hub=HubSource(
            id="openai/gsm8k",
            config="main",
            splits={"test": "test", "train": "train"},
            format=RowFormat(problem="question", answer="answer", gold="hashes", solution="answer"),
            verified=True,
        ),
        local={
            "test": LocalFile(
                "gsm8k/test.jsonl", "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14", 1319
            ),
            "train": LocalFile(
                "gsm8k/train.jsonl", "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465", 7473
            ),
        },
        local_format=RowFormat(problem="question", answer="answer", gold="hashes", solution="answer"),
        k=1,
        max_new_tokens=1024,
        fallbacks=("hashes", "answer_is", "last_number"),
    ),
    BenchmarkSpec(
        name="math_train",
        description="Hendrycks MATH train (7474 rows; 2 null and 2 empty answers are skipped and recorded).",
        # Unverified: a plausible MATH train mirror with boxed solutions; not checked offline.
        hub=HubSource(
            id="DigitalLearningGmbH/MATH-lighteval",
            splits={"train": "train"},
            format=RowFormat(problem="problem", answer="solution", gold="last_boxed", solution="solution"),
            verified=False,
        ),
        local={
            "train": LocalFile(
                "math_train/train.json",
                "569230b362fd501e1a33d8f29aae3b4b989d32e2b91b07c3f48493528c3bf6d2",
                7470,
            )
        },
        local_format=RowFormat(problem="problem", answer="answer"),
        default_split="train",
        k=8,
        max_new_tokens=4096,
        fallbacks=_MATH_FALLBACKS,
        drop_empty_answers=True,
    ),
    BenchmarkSpec(
        name="synthetic",
        description="Seeded arithmetic chains, 1-16 steps (test_ood: 17-24), answers in \\boxed{}.",
        generated=True,
        k=8,
        max_new_tokens=256,
        fallbacks=(),  # strict: the warm-up teaches \boxed{}, RL should keep rewarding only that
        prompt_template=synthetic.PROMPT_TEMPLATE,
    ),
]

REGISTRY: dict[str, BenchmarkSpec] = {spec.name: spec for spec in _SPECS}


def available() -> list[str]:
    """Names of all registered sets, sorted."""
    return sorted(REGISTRY)


def get_spec(name: str) -> BenchmarkSpec:
    """The spec registered under ``name``; unknown names raise ValueError listing the known ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown benchmark {name!r}; available: {available()}") from None
