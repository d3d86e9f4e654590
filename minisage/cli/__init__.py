"""The ``minisage`` command line: ``minisage compare | train | bench | golden | crosscheck``.

Each command is a module of this package with ``configure(parser)`` (its arguments, each with
help text; ``--help`` shows every default) and ``run(args) -> int`` (the work; its exit status).
Torch and jax are imported only inside ``run``, by the commands that need them.

:func:`main` runs the command inside :func:`minisage.runtime.tuned` (the command line owns its
process: one BLAS thread, freed memory kept for reuse) and is the one place that turns errors
into exit statuses. A user's error prints one line on stderr, ``minisage <command>: error:
<message>``, without a traceback, and exits with

- 2, a usage error: argparse rejects the command line; ``UsageError``; any other ``ValueError``
  (a value the user gave);
- 1, a failure: ``OSError`` (a missing file, a permission, a folder where a file should be),
  ``FloatingPointError`` (training diverged), ``MemoryError`` (a model or split too large for
  this machine), ``CheckpointError``, ``GoldenFormatError`` and every other ``MinisageError``;
- 130 on Ctrl-C (``KeyboardInterrupt``), with the line ``minisage <command>: interrupted``;
- 1 without a message when the reader of stdout went away (``BrokenPipeError``, e.g. ``| head``).

Anything else is a bug and shows its traceback. ``MINISAGE_DEBUG=1`` re-raises every error.
``minisage`` without a command prints the help and exits with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap

from minisage import __version__, runtime
from minisage.cli import bench, compare, crosscheck, golden, train
from minisage.errors import MinisageError, UsageError

# name -> (module, one-line help)
COMMANDS = {
    "compare": (compare, "train AdamW and SAGE over several seeds and compare them"),
    "train": (train, "one training run: any task, any optimizer preset"),
    "bench": (bench, "time the engine and optimizers (against torch if installed)"),
    "golden": (golden, "export or check the golden vectors of the spec"),
    "crosscheck": (crosscheck, "check another backend (torch, jax) against the spec"),
}
USAGE, FAILURE, INTERRUPTED = 2, 1, 130


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default after its help text, unless there is none to show (None, or
    False for a flag) or the help text already states it."""

    def _split_lines(self, text, width):
        # never break a word at a hyphen: preset names such as adamw-sage stay whole
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)

    def _get_help_string(self, action):
        help_text = action.help or ""
        if action.default is None or action.default is False or "default" in help_text:
            return help_text
        return super()._get_help_string(action)


class ArgumentError(UsageError):
    """A command line that argparse rejects; ``prog`` names the (sub)command."""

    def __init__(self, prog: str, message: str) -> None:
        self.prog = prog
        super().__init__(message)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors reach :func:`main`'s one handler instead of exiting."""

    def parse_known_args(self, args=None, namespace=None):
        self._words = list(sys.argv[1:] if args is None else args)  # for error()
        return super().parse_known_args(args, namespace)

    def error(self, message: str):
        if message.endswith("expected one argument") and self._negative_value(message):
            message += " (a value that starts with '-' is written --flag=-1e-3)"
        raise ArgumentError(self.prog, f"{message} (see {self.prog} --help)")

    def _negative_value(self, message: str) -> bool:
        """Whether the flag of ``message`` is followed by a word starting with '-' (argparse
        reads "--lr -1e-3" as two options)."""
        flags = message.removeprefix("argument ").split(":")[0].split("/")
        words = getattr(self, "_words", [])
        return any(word in flags and nxt.startswith("-") for word, nxt in zip(words, words[1:]))


def build_parser() -> Parser:
    parser = Parser(
        prog="minisage", formatter_class=HelpFormatter,
        description="minisage: an exact NumPy reference implementation of SAGE, "
        "with a tiny autograd engine, a small Transformer and toy tasks.",
    )
    parser.add_argument("--version", action="version", version=f"minisage {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text,
                                        formatter_class=HelpFormatter)
        module.configure(command_parser)
        command_parser.set_defaults(_run=module.run)
    return parser


def exit_status(err: BaseException) -> int | None:
    """The exit status of an error that is the user's (table above); None for a bug."""
    if isinstance(err, BrokenPipeError):
        return FAILURE
    if isinstance(err, KeyboardInterrupt):
        return INTERRUPTED
    if isinstance(err, UsageError):
        return USAGE
    if isinstance(err, MinisageError):
        return FAILURE
    if isinstance(err, ValueError):
        return USAGE
    if isinstance(err, (OSError, FloatingPointError, MemoryError)):
        return FAILURE
    return None


def message(err: BaseException) -> str:
    """The error as one line: an OSError as ``<file>: <reason>``, else its text."""
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        text = f"{err.filename}: {err.strerror}"
    else:
        text = str(err)
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    prog = parser.prog
    try:
        args, unknown = parser.parse_known_args(argv)
        if unknown:  # said by the command they were given to, not by minisage
            where = f"{parser.prog} {args.command}" if args.command else parser.prog
            raise ArgumentError(where, f"unrecognized arguments: {' '.join(unknown)} (see "
                                       f"{where} --help)")
        if args.command is None:
            parser.print_help(sys.stderr)
            return USAGE
        prog = f"{parser.prog} {args.command}"
        with runtime.tuned():  # the command line owns its process: one BLAS thread, malloc reuse
            status = int(args._run(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, still inside the handler
        return status
    except (Exception, KeyboardInterrupt) as err:
        status = exit_status(err)
        if status is None or os.environ.get("MINISAGE_DEBUG", "") not in ("", "0"):
            raise
        if isinstance(err, BrokenPipeError):
            _discard_stdout()
        elif isinstance(err, KeyboardInterrupt):
            detail = message(err)
            print(f"{prog}: interrupted{': ' + detail if detail else ''}", file=sys.stderr)
        else:
            prog = err.prog if isinstance(err, ArgumentError) else prog
            print(f"{prog}: error: {message(err) or type(err).__name__}", file=sys.stderr)
        return status


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so that Python's final flush does not fail a second time."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no file descriptor (e.g. captured output): nothing to do
        pass
