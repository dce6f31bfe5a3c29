"""The `clipbench` command line: one sub-command per job (`clipbench --help` lists them)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path


def _parse_lengths(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--lengths {text!r}: expected comma-separated integers") from None
    if not values:
        raise argparse.ArgumentTypeError("--lengths: give at least one length")
    return values


def _parse_params(items: Sequence[str]) -> dict[str, dict]:
    """`--param fspo.c_low=0.015` -> {"fspo": {"c_low": 0.015}} (values read as JSON, else as text)."""
    params: dict[str, dict] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        method, dot, field = key.partition(".")
        if not sep or not dot or not method or not field:
            raise SystemExit(f"--param {item!r}: expected METHOD.FIELD=VALUE, e.g. fspo.c_low=0.015")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        params.setdefault(method, {})[field] = value
    return params


def cmd_simulate(args: argparse.Namespace) -> int:
    from clipbench.simulate import SimulationConfig, simulate, write_outputs

    config = SimulationConfig(
        sigma=args.sigma,
        mu=args.mu,
        lengths=args.lengths,
        n=args.n,
        seed=args.seed,
        methods=tuple(args.methods or ()),
        method_params=_parse_params(args.param),
    )
    config.build_methods()  # fail on a bad method or hyperparameter before any compute
    result = simulate(config)
    paths = write_outputs(result, args.out)
    print(paths["table"].read_text(), end="")
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    import methods

    for name in methods.available_methods():
        print(methods.get_method_class(name).describe())
    return 0


def build_parser() -> argparse.ArgumentParser:
    from clipbench.simulate import DEFAULT_LENGTHS

    parser = argparse.ArgumentParser(
        prog="clipbench", description="Benchmark suite for clipping rules in LLM RLVR."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("methods", help="list the registered clipping rules and their hyperparameters")
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser(
        "simulate",
        help="clip rate against length for every rule under Gaussian log-ratios (no model)",
        description="Draw per-token log-ratios l_t ~ N(mu, sigma^2) for n sequences at each length, feed them "
        "through every registered rule, and write simulation.csv, simulation.md, clip_by_length.png and "
        "provenance.json. Deterministic for a seed.",
    )
    p.add_argument("--sigma", type=float, default=0.01, help="std of the per-token log-ratio (default 0.01)")
    p.add_argument(
        "--mu", type=float, default=0.0, help="mean of the per-token log-ratio, the drift (default 0)"
    )
    p.add_argument(
        "--lengths",
        type=_parse_lengths,
        default=DEFAULT_LENGTHS,
        help="comma-separated lengths (default 8,16,...,4096)",
    )
    p.add_argument("--n", type=int, default=20_000, help="sequences per length (default 20000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", nargs="*", help="rules to simulate (default: every registered rule)")
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="METHOD.FIELD=VALUE",
        help="override a hyperparameter (repeatable)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("results/simulation"),
        help="output folder (default results/simulation)",
    )
    p.set_defaults(func=cmd_simulate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as err:
        print(f"clipbench {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
