"""The ``minisage`` command line: ``minisage compare | train | bench | golden | crosscheck``.

Each subcommand lives in its own module, which provides ``configure(parser)`` (adds its arguments)
and ``run(args) -> int`` (does the work). Modules are imported only to build their parser, and any
heavy import (torch, jax) happens inside ``run``.

A user error (bad argument, missing file, invalid hyperparameter) is printed as one line, without a
traceback, and exits with status 2. Set ``MINISAGE_DEBUG=1`` to see the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "compare": ("minisage.compare", "train AdamW and SAGE over several seeds and compare them"),
    "train": ("minisage.train", "one training run: any task, any optimizer preset"),
    "bench": ("minisage.bench", "time the engine and optimizers (against torch if installed)"),
    "golden": ("minisage.golden.cli", "export or check the golden vectors of the spec"),
    "crosscheck": ("minisage.crosscheck", "check another backend (torch, jax) against the spec"),
}


def build_parser() -> argparse.ArgumentParser:
    from minisage import __version__

    parser = argparse.ArgumentParser(
        prog="minisage",
        description="minisage: an exact NumPy reference implementation of SAGE, "
        "with a tiny autograd engine, a small Transformer and toy tasks.",
    )
    parser.add_argument("--version", action="version", version=f"minisage {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name and module_name.startswith(err.name):
                continue  # subcommand not part of this build
            raise
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        module.configure(command_parser)
        command_parser.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 0
    from minisage import runtime

    try:
        with runtime.tuned():  # the command line owns its process: one BLAS thread, malloc reuse
            return int(args._run(args) or 0)
    except (ValueError, FileNotFoundError, FloatingPointError) as err:
        if os.environ.get("MINISAGE_DEBUG"):
            raise
        print(f"minisage {args.command}: error: {err}", file=sys.stderr)
        return 2
