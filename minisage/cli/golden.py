"""``minisage golden``: export, check or list the golden vectors of the spec.

    minisage golden export DIR     write DIR/<preset>.json for every preset (byte for byte what is
                                   committed under minisage/golden/vectors/); the folder is
                                   checked writable before anything is written
    minisage golden check [DIR]    regenerate in memory, compare with DIR (default: the committed
                                   vectors); one line per file that differs, naming the first
                                   differing field and both values; exit 1 on any difference
    minisage golden list           the cases, one per line
"""

from __future__ import annotations

import argparse

from minisage import golden, spec
from minisage.cli import arguments
from minisage.errors import UsageError
from minisage.golden import generate


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="golden_command", metavar="ACTION")
    preset_help = "only this preset (repeatable; default: every preset)"
    kind = {"formatter_class": parser.formatter_class}
    p = sub.add_parser("export", help="write the golden JSON files into DIR", **kind)
    p.add_argument("dir", metavar="DIR", type=arguments.path,
                   help="output folder (created if needed)")
    p.add_argument("--preset", action="append", help=preset_help)
    p = sub.add_parser("check", help="regenerate and compare with DIR (default: committed files)",
                       **kind)
    p.add_argument("dir", metavar="DIR", nargs="?", default=None, type=arguments.path,
                   help="the folder to check (default: the committed vectors)")
    p.add_argument("--preset", action="append", help=preset_help)
    p = sub.add_parser("list", help="list the committed golden cases", **kind)
    p.add_argument("--preset", action="append", help=preset_help)


def _presets(args) -> tuple[str, ...] | None:
    if not args.preset:
        return None
    for name in args.preset:
        spec.rule_class(name)  # ValueError naming the unknown preset
    return tuple(args.preset)


def run(args: argparse.Namespace) -> int:
    action = getattr(args, "golden_command", None)
    if action is None:
        raise UsageError("say what to do: export DIR, check [DIR] or list (see minisage golden "
                         "--help)")
    presets = _presets(args)
    if action == "export":
        for path in generate.export(args.dir, presets):
            print(path)
        return 0
    if action == "check":
        directory = args.dir or golden.vectors_dir()
        problems = generate.compare(directory, presets)
        if not problems:
            print(f"golden vectors in {directory}: identical to what the spec generates")
            return 0
        for line in problems:
            print(line)
        return 1
    selected = golden.cases() if presets is None else [c for p in presets for c in golden.cases(p)]
    for case in selected:
        print(f"{case.id}\t{case.dtype.name}\t{list(case.shape)}\t{len(case.steps)} steps")
    return 0
