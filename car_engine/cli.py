"""`car-engine`: one thin subcommand per stage. Each lives in car_engine/commands/<name>.py
and exposes ``register(subparsers)``, which adds its parser and sets ``func(args) -> int``."""

from __future__ import annotations

import argparse
import importlib
import sys

from car_engine import __version__
from car_engine.errors import EXIT_CODES, exit_code_for

# Order shown in --help. Each entry is a module of car_engine.commands.
COMMANDS = [
    "run", "validate", "ifd", "iqs", "embed", "cluster", "select", "report", "bench", "prepare",
]


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="car-engine",
        description="Select a small, high-quality, diverse subset of an instruction corpus "
        "(CaR: IQS ranking + embedding clusters; IFD: instruction-following difficulty).",
        epilog="Exit codes: " + ", ".join(f"{c} {m}" for c, m in EXIT_CODES.items()),
    )
    parser.add_argument("--version", action="version", version=f"car-engine {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"car_engine.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse, run, and turn every failure into a one-line error + exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("car-engine: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the CLI never ends in a traceback
        code, message = exit_code_for(err)
        print(f"car-engine {args.command}: error: {message}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
