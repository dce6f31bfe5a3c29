"""The files jobs hand each other: every name and path of a study, made and parsed here only.

A run is identified by a :class:`RunId` (method, seed). Its two spellings, the model name
``{method}-seed{seed}`` (evaluation folders, logs) and the run directory
``results/runs/{method}/seed{seed}``, are built by :meth:`RunId.model` and :meth:`RunId.run_dir`
and read back by :meth:`RunId.from_model` and :meth:`RunId.from_run_dir`; nothing else in the
project joins or splits them. Snakemake's rules (``workflows/rules/*.smk``), the CLI and the
report all build their paths with the functions below, so a path is typed once.

Layout of a study, relative to the directory Snakemake runs in (the repository root)::

    results/base/model/                          the base model every run starts from
    results/runs/{method}/seed{seed}/            one RL run (layout: clipbench.trainer)
        records/step_NNNNNN.parquet              the clip records of each step (the one copy); a run
                                                 of several processes (TRL backend): one file per
                                                 process, step_NNNNNN.rankR.parquet
        final/summary.json                       written last: the run is complete
    results/evals/{model}/{bench}.json           an evaluation summary, beside its
        {bench}.samples.jsonl, {bench}.prompts.jsonl   (owner: clipbench.evaluate)
        {bench}.lm_eval/results_<date>.json, samples_clipbench_<set>_<date>.jsonl
                                                 lm-eval's own layout (owner: clipbench.lm_eval_layout)
    results/summary.csv                          accuracy, tidy (owner: clipbench.report)
    results/fairness.csv                         fairness metrics per method and per run
    results/fairness_bins.csv                    clip rate and median |S| per length bin
    results/tables/main.md                       the main table (clipbench.report)
    results/plots/{plot}.png                     one per registered plot (clipbench.plots)
    results/probe/                               the probe of the base model, with a probe: section
        probe.json, sequences.parquet, probe.png (owner: clipbench.probe)
    results/calibration.json                     the matched clip budgets, with a calibration:
                                                 section (owner: clipbench.calibration)
    results/logs/...                             one log per job

``{model}`` is ``base`` or a run's model name; names (methods, benchmark keys) are
``[A-Za-z0-9_]+`` (:data:`NAME`), so a model name splits in exactly one way.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from clipbench.errors import RunDirError

#: The study's output folder, relative to where Snakemake runs.
RESULTS = "results"
#: The model name of the base model (every run starts from it).
BASE = "base"
#: What a method name or a benchmark key may be: it becomes a file name and a wildcard value.
NAME = re.compile(r"[A-Za-z0-9_]+")

#: How a seed is written in a name: no sign, no leading zero (``seed007`` would name the run of
#: seed 7 under another name, so it is no run's name).
SEED = "0|[1-9][0-9]*"
_MODEL = re.compile(rf"(?P<method>[A-Za-z0-9_]+)-seed(?P<seed>{SEED})")
_SEED_DIR = re.compile(rf"seed(?P<seed>{SEED})")

# Path patterns: Snakemake's rules use them with wildcards as they are; the functions below fill them.
BASE_MODEL_DIR = f"{RESULTS}/base/model"
#: The provenance file clipbench writes into every model directory it saves (clipbench.models),
#: last: the base model's marker that it is complete.
MODEL_PROVENANCE_FILE = "clipbench_model.json"
BASE_MODEL_MARKER = f"{BASE_MODEL_DIR}/{MODEL_PROVENANCE_FILE}"
MODEL_NAME = "{method}-seed{seed}"
RUN_DIR = f"{RESULTS}/runs/{{method}}/seed{{seed}}"
#: A run's final folder (the trained model, then summary.json, written last).
FINAL_DIR = "final"
RUN_FINAL_DIR = f"{RUN_DIR}/{FINAL_DIR}"
FINAL_SUMMARY_FILE = "summary.json"
RUN_FINAL_SUMMARY = f"{RUN_FINAL_DIR}/{FINAL_SUMMARY_FILE}"  # written last by a finished run
#: A verl run's folder in its run directory (train.backend verl, workflows/rules/verl.smk; written by
#: clipbench verl-config and verl, read by clipbench verl-finish: clipbench.integrations.verl_config):
#: the Hydra config, verl's per-step metrics (its file logger) and the last checkpoint merged to HF.
VERL_DIR = "verl"
VERL_CONFIG_FILE = "config.yaml"
VERL_METRICS_FILE = "metrics.jsonl"
VERL_MERGED_DIR = "hf"
VERL_VERSIONS_FILE = "versions.txt"  # `pip freeze --all` of the env verl trained in (verl.smk)
RUN_VERL_DIR = f"{RUN_DIR}/{VERL_DIR}"
RUN_VERL_CONFIG = f"{RUN_VERL_DIR}/{VERL_CONFIG_FILE}"
RUN_VERL_METRICS = f"{RUN_VERL_DIR}/{VERL_METRICS_FILE}"
RUN_VERL_MERGED_CONFIG = f"{RUN_VERL_DIR}/{VERL_MERGED_DIR}/config.json"
EVAL_SUMMARY = f"{RESULTS}/evals/{{model}}/{{bench}}.json"
SUMMARY_CSV = f"{RESULTS}/summary.csv"
#: Per method (seeds pooled) and per run: clip rate, spread, slope, LRE, S-growth exponent.
FAIRNESS_CSV = f"{RESULTS}/fairness.csv"
#: Per method and per run, per length bin: n, share, length, clip rates, median |S|, entropy.
FAIRNESS_BINS_CSV = f"{RESULTS}/fairness_bins.csv"
MAIN_TABLE = f"{RESULTS}/tables/main.md"
PLOTS_DIR = f"{RESULTS}/plots"
#: One file per plot registered in clipbench.plots, named after the plot.
PLOT_PATH = f"{PLOTS_DIR}/{{plot}}.png"
LOGS_DIR = f"{RESULTS}/logs"
TRAIN_LOG = f"{LOGS_DIR}/train/{MODEL_NAME}.log"
VERL_CONFIG_LOG = f"{LOGS_DIR}/verl_config/{MODEL_NAME}.log"
VERL_FINISH_LOG = f"{LOGS_DIR}/verl_finish/{MODEL_NAME}.log"
#: One evaluate job per model, every benchmark in it (clipbench.study.eval_plan).
EVAL_LOG = f"{LOGS_DIR}/evaluate/{{model}}.log"
BASE_MODEL_LOG = f"{LOGS_DIR}/base_model.log"
AGGREGATE_LOG = f"{LOGS_DIR}/aggregate.log"
MAIN_TABLE_LOG = f"{LOGS_DIR}/main_table.log"
PLOT_LOG = f"{LOGS_DIR}/plots/{{plot}}.log"
#: A run's clip records, one parquet file per RL step, written as the step ends (the one copy:
#: resuming drops the files of steps after the checkpoint, and a finished run's folder holds every step).
RECORDS_DIR = "records"
#: A step's file, ``step_NNNNNN.parquet`` (one process), or one part of it per process of a
#: multi-process run, ``step_NNNNNN.rankR.parquet`` (R = 0, 1, ...; no leading zero, as seeds).
_STEP_RECORDS = re.compile(rf"step_(?P<step>[0-9]{{6,}})(?:\.rank(?P<rank>{SEED}))?\.parquet")

#: The prefix ladder of the clip records: k = 8, 16, 32, ..., 32768, i.e.
#: ``clipbench.fairness.prefix_ladder(RECORD_PREFIX_MAX)`` (tests/test_artifacts.py checks that they
#: agree). One constant ladder for every run, step and backend rather than one derived from a run's
#: ``rollout.max_new_tokens``: the records of any two runs (native or TRL, any config, resumed or not)
#: then have the same columns, so they concatenate and compare, and the schema stays one fixed dict.
#: 32768 covers paper-scale responses (``workflows/config/paper.yaml`` samples up to 4096 tokens;
#: long-reasoning RL up to 32k); a rung that no response reaches is an all-NaN column, which parquet
#: stores compactly. A response longer than 32768 tokens has no rung beyond 32768.
RECORD_PREFIX_MAX = 32768
RECORD_PREFIX_LADDER: tuple[int, ...] = tuple(8 * 2**i for i in range(13))


def prefix_column(k: int) -> str:
    """The clip records' column of the prefix sum S_k: ``S_{k}`` (``S_8``, ``S_16``, ...)."""
    return f"S_{int(k)}"


#: The prefix-sum columns, in ladder order: one float64 column per rung (rather than one list column:
#: plain parquet and pandas columns, written and read like the others). Records written before they
#: existed lack them; :func:`read_clip_records` reads those as NaN.
PREFIX_COLUMNS = tuple(prefix_column(k) for k in RECORD_PREFIX_LADDER)

#: The clip records: one row per sequence and optimiser update of a run, written by the trainer
#: (:func:`write_step_records`) and by any other backend that trains a clipbench rule; read by
#: clipbench.fairness through :func:`read_clip_records`. Column -> (dtype, meaning).
CLIP_RECORD_COLUMNS: dict[str, tuple[str, str]] = {
    "step": ("int64", "RL step: one rollout batch"),
    "update": ("int64", "optimiser update within the step (0: on the weights that sampled, ratio 1)"),
    "epoch": ("int64", "pass over the step's minibatches"),
    "minibatch": ("int64", "minibatch within the epoch"),
    "seq": ("int64", "the sequence's row in the step's rollout batch (prompt-major, G per prompt)"),
    "length": ("int64", "response length L in tokens, as the rule's mask counts it"),
    "S": ("float64", "sequence log-ratio sum_t (log pi - log pi_old) over the response, as the rule saw it"),
    "advantage": ("float64", "the sequence's advantage"),
    "reward": ("float64", "verifier reward: 1 for a verified answer, else 0"),
    "entropy": ("float64", "mean per-token entropy of the sampling policy's softmax over the response"),
    "seq_clip": ("float64", "fraction of its units whose gradient the clip removed (LossOutput.seq_clip)"),
    "seq_out": ("float64", "fraction of its units outside the band, any advantage sign (LossOutput.seq_out)"),
    **{
        prefix_column(k): (
            "float64",
            f"S_{k}: the sum of the same l_t as S over the first {k} response tokens; NaN when L < {k}",
        )
        for k in RECORD_PREFIX_LADDER
    },
}


def clip_records_frame(rows: list[dict]):
    """The clip records of ``rows`` (dicts with exactly the :data:`CLIP_RECORD_COLUMNS`) as a
    DataFrame with those columns, in that order and of those dtypes; ValueError otherwise."""
    import pandas as pd

    expected = list(CLIP_RECORD_COLUMNS)
    for i, row in enumerate(rows):
        if list(row) != expected:
            missing = [c for c in expected if c not in row]
            extra = [c for c in row if c not in CLIP_RECORD_COLUMNS]
            raise ValueError(
                f"clip record {i}: columns {list(row)} are not {expected} (missing {missing}, unknown {extra})"
            )
    frame = pd.DataFrame(rows, columns=expected)
    return frame.astype({name: dtype for name, (dtype, _) in CLIP_RECORD_COLUMNS.items()})


#: A run's metrics, one JSON object per line and RL step (written by the trainer).
METRICS_FILE = "metrics.jsonl"


def read_metrics(run_dirs):
    """The metrics.jsonl of every run in ``{(method, seed): run_dir}``, one row per (method, seed,
    step), with method and seed columns."""
    import json

    import pandas as pd

    if not run_dirs:
        raise ValueError("read_metrics: no run directories given")
    frames = []
    for (method, seed), run_dir in run_dirs.items():
        lines = [line for line in (Path(run_dir) / METRICS_FILE).read_text().splitlines() if line.strip()]
        frames.append(pd.DataFrame([json.loads(line) for line in lines]).assign(method=method, seed=seed))
    return pd.concat(frames, ignore_index=True)


def run_is_finished(run_dir: str | Path) -> bool:
    """Whether a run directory has its final summary (written last by a finished run)."""
    return (Path(run_dir) / FINAL_DIR / FINAL_SUMMARY_FILE).is_file()


def records_dir(run_dir: str | Path) -> Path:
    """``{run_dir}/records``: the run's clip records, a parquet file per step."""
    return Path(run_dir) / RECORDS_DIR


def step_records_files(run_dir: str | Path) -> dict[int, list[Path]]:
    """``{step: [files]}`` of the step files in a run's records folder, in step order (temporary
    files left out): one untagged file per step, or a step's rank-tagged parts in rank order.
    Only names are read; :func:`read_clip_records` checks that the parts are complete."""
    found: dict[int, list[tuple[int, Path]]] = {}
    folder = records_dir(run_dir)
    for path in folder.glob("step_*.parquet") if folder.is_dir() else ():
        match = _STEP_RECORDS.fullmatch(path.name)
        if match:
            rank = -1 if match["rank"] is None else int(match["rank"])
            found.setdefault(int(match["step"]), []).append((rank, path))
    return {step: [path for _, path in sorted(parts)] for step, parts in sorted(found.items())}


def step_records_path(run_dir: str | Path, step: int, rank: int | None = None) -> Path:
    """Where one step's clip records go: ``records/step_NNNNNN.parquet``, or with ``rank`` (a
    process of a multi-process run writes its own part) ``records/step_NNNNNN.rankR.parquet``."""
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 0):
        raise ValueError(f"rank: {rank!r} is not a non-negative integer")
    tag = "" if rank is None else f".rank{rank}"
    return records_dir(run_dir) / f"step_{step:06d}{tag}.parquet"


def write_step_records(run_dir: str | Path, step: int, frame, rank: int | None = None) -> Path:
    """Write one step's clip records (a :func:`clip_records_frame`) atomically: a kill leaves the
    old file or the new one, never a part. ``rank``: this process's part of the step in a
    multi-process run (every process writes its own; None: the run's one process)."""
    path = step_records_path(run_dir, step, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp"
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)
    return path


def _rank_of(path: Path) -> int | None:
    rank = _STEP_RECORDS.fullmatch(path.name)["rank"]
    return None if rank is None else int(rank)


def _check_parts(folder: Path, files: dict[int, list[Path]]) -> None:
    """ValueError naming the folder and the step unless every step has one untagged file, or every
    step has the parts of ranks 0, 1, ..., R - 1, the same R for every step."""
    counts = set()
    for step, parts in files.items():
        ranks = [_rank_of(path) for path in parts]
        if None in ranks:
            if len(ranks) > 1:
                names = ", ".join(path.name for path in parts)
                raise ValueError(
                    f"{folder}: step {step} has an untagged file beside rank-tagged ones ({names}): "
                    "a run writes one or the other"
                )
            counts.add(None)
            continue
        missing = sorted(set(range(max(ranks) + 1)) - set(ranks))
        if missing:
            raise ValueError(
                f"{folder}: step {step} lacks the clip records of ranks {missing} (a damaged run?)"
            )
        counts.add(len(ranks))
    if len(counts) > 1:
        described = sorted("one untagged file" if c is None else f"{c} ranks" for c in counts)
        raise ValueError(
            f"{folder}: the steps' clip records come from different numbers of processes: {described}"
        )


def read_clip_records(run_dir: str | Path):
    """Every step's clip records of a run, in step order (and rank order within a step of a
    multi-process run), checked: ValueError naming the folder when it has no step file, misses a
    step (the steps must be 0, 1, ..., N - 1), misses a rank's part of a step (every step must
    have the parts of the same ranks 0, ..., R - 1) or lacks columns. Records without the prefix-sum
    columns (:data:`PREFIX_COLUMNS`; written before they existed) are read with those columns NaN."""
    import pandas as pd

    folder = records_dir(run_dir)
    files = step_records_files(run_dir)
    if not files:
        raise ValueError(f"{folder}: no clip records (step_NNNNNN.parquet files)")
    gaps = sorted(set(range(max(files) + 1)) - set(files))
    if gaps:
        raise ValueError(f"{folder}: the clip records of steps {gaps} are missing (a damaged run?)")
    _check_parts(folder, files)
    frame = pd.concat(
        [pd.read_parquet(path) for parts in files.values() for path in parts], ignore_index=True
    )
    missing = [c for c in CLIP_RECORD_COLUMNS if c not in frame.columns and c not in PREFIX_COLUMNS]
    if missing:
        raise ValueError(f"{folder}: not clip records, they lack the columns {missing}")
    # Records written before the prefix sums existed: NaN (pd.concat already fills the older steps
    # of a run resumed by newer code), so such a run's within-sequence exponent is NaN, not an error.
    absent = [c for c in PREFIX_COLUMNS if c not in frame.columns]
    return frame.reindex(columns=[*frame.columns, *absent]) if absent else frame


def check_name(name: object, where: str) -> str:
    """``name`` when it is a valid method name or benchmark key, else ValueError naming ``where``."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ValueError(
            f"{where}: {name!r} is not a valid name: use letters, digits and _ only "
            "(it becomes a file name under results/)"
        )
    return name


@dataclass(frozen=True, order=True)
class RunId:
    """One RL run of a study: a registered method trained with one seed."""

    method: str
    seed: int

    def __post_init__(self) -> None:
        check_name(self.method, "method")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed: {self.seed!r} is not a non-negative integer")

    def fill(self, pattern: str) -> str:
        """``pattern`` (one of this module's path patterns) with this run's method and seed."""
        return pattern.format(method=self.method, seed=self.seed)

    @property
    def model(self) -> str:
        """The model name of the run's final model: ``{method}-seed{seed}``."""
        return self.fill(MODEL_NAME)

    @property
    def run_dir(self) -> str:
        """``results/runs/{method}/seed{seed}``: where the trainer writes the run."""
        return self.fill(RUN_DIR)

    @property
    def final_dir(self) -> str:
        """The run's final model (an HF model directory) and its summary.json."""
        return self.fill(RUN_FINAL_DIR)

    @property
    def final_summary(self) -> str:
        """The file a finished run writes last: the train rule's output."""
        return self.fill(RUN_FINAL_SUMMARY)

    @property
    def train_log(self) -> str:
        return self.fill(TRAIN_LOG)

    @classmethod
    def from_model(cls, model: str) -> RunId:
        """The run of a model name ``{method}-seed{seed}`` (ValueError for anything else, ``base`` too)."""
        match = _MODEL.fullmatch(model) if isinstance(model, str) else None
        if match is None:
            raise ValueError(f"{model!r} is not a run's model name ({{method}}-seed{{seed}})")
        return cls(match["method"], int(match["seed"]))

    @classmethod
    def from_run_dir(cls, path: str | Path) -> RunId:
        """The run of a directory ``.../{method}/seed{seed}`` (ValueError naming it otherwise)."""
        path = Path(path)
        match = _SEED_DIR.fullmatch(path.name)
        if match is None or not NAME.fullmatch(path.parent.name):
            raise ValueError(f"{path}: expected a run directory named seed<N> under its method's folder")
        return cls(path.parent.name, int(match["seed"]))


def parse_model(model: str) -> RunId | None:
    """None for the base model, else the run whose final model ``model`` names."""
    return None if model == BASE else RunId.from_model(model)


def model_dir(model: str, base_dir: str = BASE_MODEL_DIR) -> str:
    """The HF model directory of a model name: ``base_dir`` for the base, else the run's final one."""
    run = parse_model(model)
    return base_dir if run is None else run.final_dir


def eval_summary(model: str, bench: str) -> str:
    """One evaluation's summary (its sibling files: clipbench.evaluate.output_paths)."""
    return EVAL_SUMMARY.format(model=model, bench=bench)


def eval_model_and_bench(path: str | Path) -> tuple[str, str]:
    """``(model, bench)`` of an evaluation summary path ``.../{model}/{bench}.json``."""
    path = Path(path)
    return path.parent.name, path.stem


def plot_path(name: str, plots_dir: str | Path = PLOTS_DIR) -> str:
    """Where the plot registered as ``name`` (clipbench.plots) goes: ``{plots_dir}/{name}.png``."""
    check_name(name, "plot")
    return f"{plots_dir}/{name}.png"


def model_wildcard(methods: list[str]) -> str:
    """The regular expression a ``{model}`` wildcard may match: ``base`` or a run of ``methods``."""
    return "|".join([BASE] + [re.escape(m) + f"-seed(?:{SEED})" for m in methods])


#: `clipbench probe`'s outputs in its --out folder (owner: clipbench.probe).
PROBE_FILES = {"summary": "probe.json", "sequences": "sequences.parquet", "plot": "probe.png"}
#: The study's probe of its base model (the probe rule, with a ``probe:`` section): its --out folder.
PROBE_DIR = f"{RESULTS}/probe"
PROBE_SUMMARY = f"{PROBE_DIR}/{PROBE_FILES['summary']}"
PROBE_SEQUENCES = f"{PROBE_DIR}/{PROBE_FILES['sequences']}"
PROBE_PLOT = f"{PROBE_DIR}/{PROBE_FILES['plot']}"
PROBE_LOG = f"{LOGS_DIR}/probe.log"
#: The matched clip budgets (the calibrate rule, with a ``calibration:`` section; owner:
#: clipbench.calibration): each calibrated rule's band, read by every train job.
CALIBRATION_JSON = f"{RESULTS}/calibration.json"
CALIBRATION_LOG = f"{LOGS_DIR}/calibrate.log"


def probe_paths(out_dir: str | Path) -> dict[str, Path]:
    """The paths of a probe's outputs in ``out_dir``: summary (probe.json: every number, the config
    and provenance), sequences (sequences.parquet: one row per measured sequence) and plot."""
    return {kind: Path(out_dir) / name for kind, name in PROBE_FILES.items()}


def check_run_dir_path(run_dir: Path) -> None:
    """RunDirError unless `run_dir` is (or can be created as) a writable directory; writes nothing.
    Here, not in clipbench.trainer, so that `clipbench train` checks `--out` before it imports torch
    and transformers."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(
            f"{run_dir}: exists and is not a directory; the run directory (--out) must be a directory"
        )
    ancestor = run_dir
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise RunDirError(f"{run_dir}: cannot be created, {ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        what = (
            "cannot write into" if ancestor == run_dir else "cannot be created, no permission to write into"
        )
        raise RunDirError(f"{run_dir}: {what} {ancestor} (permission denied)")
