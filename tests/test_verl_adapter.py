"""The verl adapter (clipbench/integrations/verl.py) inside verl 0.9.1, in verl's own venv (issue 15).

* Every registered rule is in verl's policy-loss registry as clipbench_<name>, by `register_all` and
  by importing the plugin module verl's workers import.
* Through `core_algos.get_policy_loss_fn("clipbench_<name>")`, every rule (with its default
  hyperparameters, each rule with an aggregation in all four) gives the loss and gradient of
  `get_method(name).loss` on seeded random float64 batches (tests/test_verl_parity.py's, whose
  token-level advantages carry garbage off the mask), to 1e-6 relative (measured: bit-identical).
* verl's global-batch normalisation: micro-batches with verl's `global_batch_info` add up to the
  minibatch's loss and gradient, and two data-parallel ranks (each loss times dp_size, gradients
  averaged as FSDP does) to the same.
* What the adapter refuses, each naming the rule: a loss_agg_mode the rule does not compute
  (token-sum for every rule), the wrong loss_scale_factor, advantages that vary over a response,
  rollout-correction weights, a statistics rule given part of a minibatch, settings of another rule.
* The clip records of a simulated verl schedule (2 steps x 2 epochs x 2 minibatches x 2 micro-batches,
  one rank and two), written through the side channel (CLIPBENCH_VERL_RUN), read back by
  `clipbench.artifacts.read_clip_records`, equal the records of each update's `rule.loss` on its
  minibatch (what the native trainer writes), and `clipbench.report.collect_fairness` (what
  `clipbench aggregate` runs) gives the same fairness tables on both.
* The config `clipbench verl-config` writes composes with Hydra over verl's ppo_trainer, passes
  verl's `validate_config`, builds verl's actor config, and its loss settings are accepted by the
  adapter; verl's PolicyLossConfig refuses an extra key (why the side channel exists).

Run as tests/test_verl_parity.py is (no conftest, no addopts, clipbench from the checkout):
    CLIPBENCH_REQUIRE_VERL=1 PYTHONPATH=. venv-verl/bin/python -m pytest tests/test_verl_adapter.py \
        --noconftest -p no:cacheprovider -o addopts="" -q
"""

from __future__ import annotations

import dataclasses
import importlib
import os

import pytest
import torch

if os.environ.get("CLIPBENCH_REQUIRE_VERL"):
    core_algos = importlib.import_module("verl.trainer.ppo.core_algos")
    actor_config = importlib.import_module("verl.workers.config.actor")
else:
    core_algos = pytest.importorskip("verl.trainer.ppo.core_algos")
    actor_config = pytest.importorskip("verl.workers.config.actor")

import pandas as pd  # noqa: E402
from test_verl_parity import random_batch  # noqa: E402  (the same batches as the parity tests)

from clipbench import artifacts, fairness, methods, report  # noqa: E402
from clipbench.integrations import verl as adapter  # noqa: E402

N_BATCHES = 40
RTOL = 1e-6
NORM_TOKENS = 16


def cases() -> list[tuple[str, dict]]:
    """(rule, hyperparameters): every registered rule with its defaults; each rule with an aggregation
    hyperparameter in each of the four; FSPO with its KL drift (a statistics rule)."""
    out = []
    for name in methods.available_methods():
        out.append((name, {}))
        if "aggregation" in methods.get_method(name).hparams():
            for aggregation in adapter.VERL_MODES:
                if aggregation != methods.get_method(name).aggregation:
                    norm = NORM_TOKENS if aggregation == "seq_mean_token_sum_norm" else None
                    out.append((name, {"aggregation": aggregation, "norm_tokens": norm}))
    out.append(("fspo", {"drift": "kl", "c_low": 0.5, "c_high": 0.5}))
    return out


CASES = cases()
IDS = [f"{name}-{'-'.join(f'{k}={v}' for k, v in params.items()) or 'defaults'}" for name, params in CASES]


def actor(mode: str, info: dict | None = None, epochs: int = 1, scale: int | None = None):
    """verl's ActorConfig as the actor hands it to a policy loss (global_batch_info set per call)."""
    return actor_config.ActorConfig(
        strategy="fsdp",
        rollout_n=1,
        ppo_micro_batch_size_per_gpu=1,
        loss_agg_mode=mode,
        loss_scale_factor=scale,
        ppo_epochs=epochs,
        global_batch_info=dict(info or {}),
    )


@pytest.fixture(autouse=True)
def fresh_session(monkeypatch):
    """Each test starts without settings (and sets its own)."""
    monkeypatch.delenv(adapter.SETTINGS_ENV, raising=False)
    adapter.reset_session()
    adapter.register_all()
    yield
    adapter.reset_session()


def use(name: str, params: dict, **schedule) -> methods.Method:
    """Make this process's adapter session the settings of `name` with `params`; returns the rule."""
    adapter._SESSION = adapter.Session(adapter.Settings(method=name, params=params, **schedule))
    return methods.get_method(name, **params)


def token_advantages(adv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """verl's token-level advantages: the sequence's on its tokens, garbage (not 0) off the mask."""
    return torch.where(
        mask, adv.unsqueeze(-1).expand(mask.shape), torch.full(mask.shape, 7.0, dtype=adv.dtype)
    )


def ours(rule, logp, old, adv, mask, totals=None):
    x = logp.clone().requires_grad_(True)
    loss = rule.loss(x, old, adv, mask, totals=totals).loss
    loss.backward()
    return loss.detach(), x.grad


def through_verl(name, logp, old, adv, mask, cfg):
    x = logp.clone().requires_grad_(True)
    fn = core_algos.get_policy_loss_fn(adapter.loss_name(name))
    loss, metrics = fn(old, x, token_advantages(adv, mask), mask, cfg.loss_agg_mode, cfg)
    loss.backward()
    return loss.detach(), x.grad, metrics


def mode_of(rule) -> tuple[str, int | None]:
    return adapter.accepted_mode(rule)


# --------------------------------------------------------------------------- the registry


def test_register_all_puts_every_rule_into_verls_registry():
    names = adapter.register_all()
    assert names == [f"clipbench_{m}" for m in methods.available_methods()]
    for name in names:
        assert core_algos.get_policy_loss_fn(name) is core_algos.POLICY_LOSS_REGISTRY[name]
    plugin = importlib.import_module("clipbench.integrations.verl_plugin")  # what verl's workers import
    assert plugin.REGISTERED == names
    assert "vanilla" in core_algos.POLICY_LOSS_REGISTRY  # verl's own are still there


# --------------------------------------------------------------------------- the loss


@pytest.mark.parametrize(("name", "params"), CASES, ids=IDS)
def test_every_rule_through_verls_registry_is_the_rule(name, params):
    rule = use(name, params)
    mode, scale = mode_of(rule)
    cfg = actor(mode, scale=scale)
    for seed in range(N_BATCHES):
        logp, old, adv, mask = random_batch(seed)
        want = ours(rule, logp, old, adv, mask)
        loss, grad, metrics = through_verl(name, logp, old, adv, mask, cfg)
        torch.testing.assert_close(loss, want[0], rtol=RTOL, atol=1e-12)
        torch.testing.assert_close(grad, want[1], rtol=RTOL, atol=1e-12)
        assert metrics["actor/pg_clipfrac"] == metrics["actor/clipbench_clip_frac"]
        assert {"actor/ppo_kl", "actor/pg_clipfrac_lower"} <= set(metrics)


def split_rows(rows: int, parts: int) -> list[slice]:
    bounds = [round(i * rows / parts) for i in range(parts + 1)]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


@pytest.mark.parametrize(
    ("name", "params"), [c for c in CASES if not methods.get_method(c[0], **c[1]).needs_minibatch_statistics]
)
def test_micro_batches_and_ranks_with_verls_global_counts_add_up_to_the_minibatch(name, params):
    """Micro-batches (dp_size 1) sum to the minibatch; two ranks' losses times dp_size, their gradients
    averaged (FSDP), give it too. global_batch_size: the sequences with tokens (verl's responses
    all have one; these random batches have empty rows)."""
    rule = use(name, params)
    mode, scale = mode_of(rule)
    for seed in range(0, N_BATCHES, 3):
        logp, old, adv, mask = random_batch(seed)
        want = ours(rule, logp, old, adv, mask)
        lengths = mask.sum(-1)
        info = {"batch_num_tokens": int(lengths.sum()), "global_batch_size": int((lengths > 0).sum())}
        for dp, parts in ((1, 3), (2, 2)):
            loss, grad = torch.zeros((), dtype=torch.float64), torch.zeros_like(logp)
            cfg = actor(mode, {**info, "dp_size": dp}, scale=scale)
            for rows in split_rows(len(adv), parts):
                part = through_verl(name, logp[rows], old[rows], adv[rows], mask[rows], cfg)
                loss, grad[rows] = loss + part[0], part[1]
            torch.testing.assert_close(loss / dp, want[0], rtol=1e-10, atol=1e-14)  # the ranks' mean
            torch.testing.assert_close(grad / dp, want[1], rtol=1e-10, atol=1e-14)


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("name", methods.available_methods())
def test_every_rule_refuses_token_sum_and_every_mode_but_its_own(name):
    rule = use(name, {})
    mode, scale = mode_of(rule)
    logp, old, adv, mask = random_batch(1)
    for other in ("token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean"):
        if other == mode:
            continue
        with pytest.raises(
            ValueError,
            match=rf"clipbench_{name}: actor.loss_agg_mode='{other}'.*takes loss_agg_mode='{mode}' only",
        ):
            through_verl(name, logp, old, adv, mask, actor(other))


def test_the_refusal_names_the_rules_aggregation():
    use("grpo", {})
    logp, old, adv, mask = random_batch(1)
    with pytest.raises(ValueError, match="its aggregation hyperparameter is 'seq_mean_token_mean'"):
        through_verl("grpo", logp, old, adv, mask, actor("token-mean"))
    adapter.reset_session()
    with pytest.raises(ValueError, match="a mean over the minibatch's sequences"):
        through_verl("gspo", logp, old, adv, mask, actor("token-mean"))


def test_sum_norm_needs_the_rules_norm_tokens_as_loss_scale_factor():
    use("ppo", {"aggregation": "seq_mean_token_sum_norm", "norm_tokens": NORM_TOKENS})
    logp, old, adv, mask = random_batch(1)
    for wrong in (None, NORM_TOKENS + 1):
        with pytest.raises(ValueError, match=f"set actor.loss_scale_factor={NORM_TOKENS}"):
            through_verl("ppo", logp, old, adv, mask, actor("seq-mean-token-sum-norm", scale=wrong))


def test_advantages_that_vary_over_a_response_are_refused_naming_the_row():
    use("fspo", {})
    logp, old, adv, mask = random_batch(1)
    token_adv = token_advantages(adv, mask)
    row = int(mask.sum(-1).argmax())
    last = int(mask[row].sum()) - 1
    assert last >= 1  # a response of two tokens or more
    token_adv[row, last] += 0.5  # one token of the response off its sequence's advantage
    fn = core_algos.get_policy_loss_fn("clipbench_fspo")
    fn(old, logp, token_advantages(adv, mask), mask, "seq-mean-token-mean", actor("seq-mean-token-mean"))
    with pytest.raises(ValueError, match=f"advantages of response row {row} vary over its tokens"):
        fn(old, logp, token_adv, mask, "seq-mean-token-mean", actor("seq-mean-token-mean"))


def test_rollout_correction_weights_are_refused():
    use("fspo", {})
    logp, old, adv, mask = random_batch(1)
    fn = core_algos.get_policy_loss_fn("clipbench_fspo")
    with pytest.raises(ValueError, match="rollout_is_weights"):
        fn(
            old,
            logp,
            token_advantages(adv, mask),
            mask,
            "seq-mean-token-mean",
            actor("seq-mean-token-mean"),
            torch.ones_like(logp),
        )


def test_a_statistics_rule_runs_on_a_whole_minibatch_and_refuses_part_of_one():
    """powerband fits its exponent to the minibatch: the whole minibatch in one call (verl's counts
    equal its own) is the rule; a micro-batch of it, or two ranks, is refused."""
    rule = use("powerband", {})
    assert rule.needs_minibatch_statistics
    logp, old, adv, mask = random_batch(3)
    tokens = int(mask.sum())
    whole = actor(
        "seq-mean-token-mean", {"dp_size": 1, "batch_num_tokens": tokens, "global_batch_size": len(adv)}
    )
    torch.testing.assert_close(
        through_verl("powerband", logp, old, adv, mask, whole)[0], ours(rule, logp, old, adv, mask)[0]
    )
    for info in (
        {"dp_size": 1, "batch_num_tokens": tokens + 5},
        {"dp_size": 2, "batch_num_tokens": tokens, "global_batch_size": 9},
    ):
        with pytest.raises(ValueError, match="reads a statistic of the whole minibatch"):
            through_verl("powerband", logp, old, adv, mask, actor("seq-mean-token-mean", info))


def test_settings_of_another_rule_and_ranks_without_counts_are_refused():
    use("fspo", {})
    logp, old, adv, mask = random_batch(1)
    with pytest.raises(ValueError, match="settings .* are for clipbench_fspo"):
        through_verl("gspo", logp, old, adv, mask, actor("seq-mean-token-mean"))
    with pytest.raises(ValueError, match="dp_size=2 without the global minibatch's batch_num_tokens"):
        through_verl("fspo", logp, old, adv, mask, actor("seq-mean-token-mean", {"dp_size": 2}))


# --------------------------------------------------------------------------- clip records


ROLLOUT, MINIBATCHES, EPOCHS, STEPS, MICRO = 8, 2, 2, 2, 2
METHOD, PARAMS = "fspo", {"c_low": 0.2, "c_high": 0.2}


def rollout(step: int):
    """One step's rollout batch (8 rows with tokens, as verl's responses) and, per update, the
    current policy's log-probs (it moves from update to update)."""
    g = torch.Generator().manual_seed(100 + step)
    width = 9
    lengths = torch.randint(1, width + 1, (ROLLOUT,), generator=g)
    mask = torch.arange(width).expand(ROLLOUT, width) < lengths.unsqueeze(1)
    old = -torch.rand(ROLLOUT, width, generator=g, dtype=torch.float64) * 3
    adv = torch.randn(ROLLOUT, generator=g, dtype=torch.float64)
    logps = [
        old + 0.15 * u * torch.randn(ROLLOUT, width, generator=g, dtype=torch.float64)
        for u in range(EPOCHS * MINIBATCHES)
    ]
    return old, adv, mask, logps


def minibatch_rows(dp: int, rank: int, minibatch: int) -> list[int]:
    """The rollout rows of `minibatch` on `rank` as verl lays them out: each rank gets a contiguous
    1/dp of the rollout batch and cuts it into the minibatches in order."""
    per_rank = ROLLOUT // dp
    mine = per_rank // MINIBATCHES
    start = rank * per_rank + minibatch * mine
    return list(range(start, start + mine))


def native_records(rule, dp: int = 1) -> pd.DataFrame:
    """What the native trainer records: per update, the rule's output on its whole minibatch (the
    rows of every rank, verl's layout)."""
    rows = []
    for step in range(STEPS):
        old, adv, mask, logps = rollout(step)
        for update in range(EPOCHS * MINIBATCHES):
            epoch, minibatch = divmod(update, MINIBATCHES)
            idx = [row for rank in range(dp) for row in minibatch_rows(dp, rank, minibatch)]
            out = rule.loss(logps[update][idx], old[idx], adv[idx], mask[idx])
            # the prefix sums from l_t = logp - old_logp on the response tokens, computed here
            l_t = ((logps[update][idx] - old[idx]) * mask[idx]).double()
            prefix = fairness.record_prefix_sums(l_t.detach(), mask[idx])
            for i, seq in enumerate(idx):
                rows.append(
                    {
                        "step": step,
                        "update": update,
                        "epoch": epoch,
                        "minibatch": minibatch,
                        "seq": seq,
                        "length": int(out.lengths[i]),
                        "S": float(out.seq_log_ratio[i]),
                        "advantage": float(adv[seq]),
                        "reward": float("nan"),
                        "entropy": float("nan"),
                        "seq_clip": float(out.seq_clip[i]),
                        "seq_out": float(out.seq_out[i]),
                        **prefix[i],
                    }
                )
    return artifacts.clip_records_frame(rows)


def run_schedule(dp: int, rank: int) -> None:
    """verl's calls on one rank: per step, epoch and minibatch, its rows of the minibatch in
    micro-batches of MICRO rows, with verl's global counts of the minibatch (over every rank)."""
    fn = core_algos.get_policy_loss_fn(adapter.loss_name(METHOD))
    for step in range(STEPS):
        old, adv, mask, logps = rollout(step)
        for update in range(EPOCHS * MINIBATCHES):
            minibatch = update % MINIBATCHES
            every = [row for r in range(dp) for row in minibatch_rows(dp, r, minibatch)]
            info = {
                "dp_size": dp,
                "batch_num_tokens": int(mask[every].sum()),
                "global_batch_size": len(every),
            }
            cfg = actor("seq-mean-token-mean", info, epochs=EPOCHS)
            mine = minibatch_rows(dp, rank, minibatch)
            for first in range(0, len(mine), MICRO):
                r = mine[first : first + MICRO]
                fn(
                    old[r],
                    logps[update][r],
                    token_advantages(adv[r], mask[r]),
                    mask[r],
                    "seq-mean-token-mean",
                    cfg,
                )


def settings_file(tmp_path, monkeypatch, run_dir):
    path = adapter.write_settings(
        tmp_path / "clipbench.json",
        adapter.Settings(METHOD, PARAMS, str(run_dir), ROLLOUT, MINIBATCHES, EPOCHS),
    )
    monkeypatch.setenv(adapter.SETTINGS_ENV, str(path))
    adapter.reset_session()
    return path


def test_records_of_one_rank_are_the_native_trainers_and_aggregate_alike(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    settings_file(tmp_path, monkeypatch, run_dir)
    run_schedule(dp=1, rank=0)
    assert sorted(p.name for p in artifacts.records_dir(run_dir).iterdir()) == [
        "step_000000.rank0.parquet",
        "step_000001.rank0.parquet",
    ]
    got = artifacts.read_clip_records(run_dir)
    want = native_records(methods.get_method(METHOD, **PARAMS))
    pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-12)
    assert got["seq_out"].between(0, 1).all() and 0 < got.loc[got["update"] > 0, "seq_out"].mean() < 1

    def tables(records):
        return report.collect_fairness(records.assign(method=METHOD, seed=0), n_bins=3, n_resamples=50)

    for table, expected in zip(tables(got), tables(want), strict=True):
        pd.testing.assert_frame_equal(table, expected)
    assert tables(got)[0]["clip_rate"].notna().all()


def test_records_of_two_ranks_each_hold_their_rows(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    settings_file(tmp_path, monkeypatch, run_dir)
    for rank in (0, 1):
        adapter.reset_session()
        monkeypatch.setattr(adapter, "process_rank", lambda dp, rank=rank: rank)
        run_schedule(dp=2, rank=rank)
    files = artifacts.step_records_files(run_dir)
    assert {step: [p.name for p in parts] for step, parts in files.items()} == {
        0: ["step_000000.rank0.parquet", "step_000000.rank1.parquet"],
        1: ["step_000001.rank0.parquet", "step_000001.rank1.parquet"],
    }
    got = artifacts.read_clip_records(run_dir).sort_values(["step", "update", "seq"], ignore_index=True)
    # rank r holds rows 4r..4r+3, in minibatches of 2: seq is the row of the step's rollout batch
    want = native_records(methods.get_method(METHOD, **PARAMS), dp=2)
    pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-12)


def test_a_schedule_that_is_not_the_settings_is_an_error(tmp_path, monkeypatch):
    settings_file(tmp_path, monkeypatch, tmp_path / "run")
    fn = core_algos.get_policy_loss_fn(adapter.loss_name(METHOD))
    old, adv, mask, logps = rollout(0)
    args = (old[:2], logps[1][:2], token_advantages(adv[:2], mask[:2]), mask[:2], "seq-mean-token-mean")
    info = {"dp_size": 1, "batch_num_tokens": int(mask[:4].sum())}
    with pytest.raises(ValueError, match="verl's minibatch holds 8 sequences, the settings' 4"):
        fn(*args, actor("seq-mean-token-mean", {**info, "global_batch_size": 8}, epochs=EPOCHS))
    with pytest.raises(ValueError, match="actor.ppo_epochs=1, the settings' epochs=2"):
        fn(*args, actor("seq-mean-token-mean", {**info, "global_batch_size": 4}, epochs=1))
    adapter.reset_session()
    cfg = actor(
        "seq-mean-token-mean",
        {"dp_size": 1, "batch_num_tokens": int(mask.sum()), "global_batch_size": 4},
        epochs=EPOCHS,
    )
    fn(*args, cfg)  # rows 0-1 of the first minibatch of 4
    three = (old[2:5], logps[0][2:5], token_advantages(adv[2:5], mask[2:5]), mask[2:5], "seq-mean-token-mean")
    with pytest.raises(ValueError, match="a micro-batch of 3 rows at row 2 of a minibatch of 4 .* crosses"):
        fn(*three, cfg)


# --------------------------------------------------------------------------- the generated config


BASE_RUN = {
    "model": "/models/base",
    "seed": 1,
    "steps": 12,
    "data": {"benchmark": "synthetic", "split": "train", "n": 2000},
    "rollout": {"prompts_per_step": 4, "samples_per_prompt": 8, "max_new_tokens": 128},
}
VARIANTS = {
    # float32, KL to the reference, each GPU's share of a minibatch at once, on 2 GPUs
    "static-kl": (
        {
            "method": "gspo",
            "method_params": {"eps_low": 0.005, "eps_high": 0.005},
            "optim": {"lr": 1e-4, "minibatches": 4, "epochs": 2, "grad_clip": 1.0},
            "kl_beta": 0.01,
        },
        (1, 2),
    ),
    # bfloat16, dynamic micro-batches, Dr. GRPO's constant, on 2 nodes x 4 GPUs
    "dynamic-sum-norm": (
        {
            "method": "ppo",
            "method_params": {"aggregation": "seq_mean_token_sum_norm", "norm_tokens": 128},
            "optim": {"lr": 1e-6, "minibatches": 2, "epochs": 1, "max_tokens_per_microbatch": 4096},
            "dtype": "bfloat16",
        },
        (2, 4),
    ),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_generated_config_composes_over_verls_and_its_loss_runs(tmp_path, variant):
    import yaml
    from hydra import compose, initialize_config_dir
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass, validate_config
    from verl.utils.import_utils import load_extern_object

    from clipbench.config import TrainConfig, from_dict, validate
    from clipbench.integrations import verl_config

    fields, (nodes, gpus) = VARIANTS[variant]
    cfg = validate(from_dict(TrainConfig, {**BASE_RUN, **fields}))
    files = verl_config.RunFiles(tmp_path / "verl" / "config.yaml")
    config = verl_config.hydra_config(
        cfg,
        files,
        model="/models/base",
        cluster=verl_config.Cluster(nodes, gpus),
        max_prompt_length=64,
        repo_root="/repo",
    )
    files.folder.mkdir()
    files.config.write_text(yaml.safe_dump(config, sort_keys=False))
    with initialize_config_dir(config_dir=str(files.folder), version_base=None):
        composed = compose(config_name="config")
    kl = cfg.kl_beta > 0
    assert (
        not need_critic(composed) and need_reference_policy(composed) == kl
    )  # outcome advantages: no critic
    validate_config(composed, use_reference_policy=kl, use_critic=False)
    a = omega_conf_to_dataclass(composed.actor_rollout_ref.actor)
    mode, scale = adapter.accepted_mode(cfg.build_method())
    o = cfg.optim
    assert (a.policy_loss.loss_mode, a.loss_agg_mode, a.loss_scale_factor) == (
        f"clipbench_{cfg.method}",
        mode,
        scale,
    )
    assert (a.ppo_mini_batch_size, a.ppo_epochs, a.use_kl_loss, a.kl_loss_coef, a.optim.lr) == (
        4 // o.minibatches,
        o.epochs,
        kl,
        cfg.kl_beta,
        o.lr,
    )
    if o.max_tokens_per_microbatch is None:
        assert (a.use_dynamic_bsz, a.ppo_micro_batch_size_per_gpu) == (
            False,
            4 // o.minibatches * 8 // (nodes * gpus),
        )
        assert composed.actor_rollout_ref.actor.fsdp_config.mixed_precision.param_dtype == "fp32"
    else:
        assert (a.use_dynamic_bsz, a.ppo_max_token_len_per_gpu) == (True, o.max_tokens_per_microbatch)
        assert composed.actor_rollout_ref.rollout.log_prob_use_dynamic_bsz  # verl's interpolation
    assert composed.actor_rollout_ref.rollout.n == 8 and composed.data.train_batch_size == 4
    assert (composed.trainer.nnodes, composed.trainer.n_gpus_per_node) == (nodes, gpus)
    env = composed.ray_kwargs.ray_init.runtime_env.env_vars
    assert env[adapter.SETTINGS_ENV] == str(files.settings) and env.PYTHONPATH == "/repo"
    reward = composed.reward.custom_reward_function
    assert load_extern_object(reward.path, reward.name).__module__ == "clipbench.integrations.verl_reward"
    # the adapter takes verl's actor config as it is built from this file
    rule = use(cfg.method, dict(cfg.method_params))
    logp, old, adv, mask = random_batch(5)
    fn = core_algos.get_policy_loss_fn(a.policy_loss.loss_mode)
    got = fn(old, logp, token_advantages(adv, mask), mask, a.loss_agg_mode, a)
    torch.testing.assert_close(got[0], rule.loss(logp, old, adv, mask).loss)


def test_verls_policy_loss_config_refuses_a_clipbench_key():
    """Why the hyperparameters go through CLIPBENCH_VERL_RUN: verl's config keeps no extra key."""
    from omegaconf import OmegaConf
    from verl.utils.config import omega_conf_to_dataclass

    node = OmegaConf.create(
        {"_target_": "verl.workers.config.PolicyLossConfig", "loss_mode": "clipbench_fspo"}
    )
    assert omega_conf_to_dataclass(node).loss_mode == "clipbench_fspo"
    node.clipbench_params = {"c_low": 0.1}
    with pytest.raises(Exception, match="clipbench_params"):
        omega_conf_to_dataclass(node)
    assert dataclasses.fields(actor_config.PolicyLossConfig)  # a dataclass: its fields are fixed
