"""``minisage crosscheck``: run every golden case of the spec through another backend.

::

    minisage crosscheck --backend torch [--dtype float32|float64|bfloat16] [--device cpu|cuda]
                        [--chain] [--preset PRESET ...]
    minisage crosscheck --backend jax   [--dtype float32|float64|bfloat16] [--device cpu|cuda]

The table and what its columns mean: :mod:`minisage.crosscheck`. The exit status is 1 if any
case fails (its first mismatch is printed under the table). The framework is imported inside
:func:`run`.
"""

from __future__ import annotations

import argparse

from minisage.crosscheck import (
    BACKENDS,
    DTYPES,
    HALF_DTYPES,
    backend_functions,
    check_backend,
    format_table,
)
from minisage.errors import UsageError


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", required=True, choices=BACKENDS,
                        help="the implementation to check: torch (minisage.backends.torch and "
                             "torch.optim) or jax (minisage.backends.jax, optax)")
    parser.add_argument("--dtype", choices=DTYPES + HALF_DTYPES, default=None,
                        help="run only the golden cases of this dtype (default: float64 and "
                             "float32); bfloat16: the float32 cases with bfloat16 parameters, "
                             "to a tolerance from bfloat16's unit roundoff")
    parser.add_argument("--device", default="cpu",
                        help="cpu or cuda (cuda:N); cuda fails with a clear error where no GPU "
                             "is available")
    parser.add_argument("--preset", action="append", default=None, metavar="PRESET",
                        help="check only this spec preset (repeatable; default: every preset "
                             "the backend implements)")
    parser.add_argument("--chain", action="store_true",
                        help="carry the backend's own state from step to step (default: start "
                             "every step from the golden state)")


def run(args: argparse.Namespace) -> int:
    device = str(args.device)
    if device.split(":")[0] not in ("cpu", "cuda"):
        raise UsageError(f"--device must be cpu or cuda (optionally cuda:N), got {device!r}")
    dtypes = DTYPES if args.dtype is None else (args.dtype,)
    rows = []
    for dtype in dtypes:
        half = dtype if dtype in HALF_DTYPES else None
        functions = backend_functions(args.backend, device, param_dtype=half)
        if args.preset:
            implemented = sorted({preset for _, preset, _ in functions})
            unknown = [p for p in args.preset if p not in implemented]
            if unknown:
                raise UsageError(f"the {args.backend} backend implements no preset "
                                 f"{', '.join(map(repr, unknown))}; it has: "
                                 f"{', '.join(implemented)}")
            functions = [f for f in functions if f[1] in args.preset]
        rows += check_backend(functions, (dtype,), chain=args.chain)
    print(f"minisage crosscheck: backend {args.backend}, device {device}, "
          f"{'chained' if args.chain else 'golden'} state; relative error "
          "|got - expected| / (|expected| + atol/rtol), ok when <= tolerance")
    if any(dtype in HALF_DTYPES for dtype in dtypes):
        print("bfloat16 rows: the single-precision cases with bfloat16 parameters; relative "
              "error |got - expected| / (|expected| + max |expected|)")
    print(format_table(rows))
    failed = [r for r in rows if not r.ok]
    total = sum(r.cases for r in rows)
    if failed:
        print(f"{len(failed)} of {len(rows)} implementations FAILED")
        return 1
    print(f"all {len(rows)} implementations agree with the spec on {total} golden runs")
    return 0
