"""`python -m bench [--quick] [--only autosave,resume,...] [--threads N] [--dir TMP] [--out FILE]`."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import traceback
from pathlib import Path

from . import MEASURES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smallest sizes (the smoke test's), seconds not minutes")
    parser.add_argument("--only", default=",".join(MEASURES), help=f"comma list of {', '.join(MEASURES)}")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: steadier on a shared or small machine)")
    parser.add_argument("--repeats", type=int, default=None, help="repeats per timing (default per measure)")
    parser.add_argument("--dir", type=Path, default=None, help="folder for the files written (default: temp)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results.json")
    args = parser.parse_args(argv)
    only = [m.strip() for m in args.only.split(",") if m.strip()]
    unknown = sorted(set(only) - set(MEASURES))
    if unknown:
        parser.error(f"unknown measure(s) {', '.join(unknown)}: choose from {', '.join(MEASURES)}")

    import torch

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run(args, only)
    finally:
        torch.set_num_threads(previous_threads)


def _run(args, only: list[str]) -> int:
    from .common import Row, machine_info, markdown_table, write_results

    info = machine_info()
    print(f"goan bench on {info['cpu']} ({info['cores']} cores, torch {info['torch']}, {args.threads} torch "
          f"thread(s), load average {info['load_average_at_start']}){' --quick' if args.quick else ''}", flush=True)
    started = time.monotonic()
    rows: list[Row] = []
    failed = False
    for name in only:
        t0 = time.monotonic()
        module = importlib.import_module(f".{name}", __package__)
        try:
            got = module.run(quick=args.quick, base_dir=args.dir, repeats=args.repeats)
        except Exception as error:  # one broken measure must not hide the others
            traceback.print_exc()
            got = [Row(f"{name}: failed", None, "", skipped=f"{type(error).__name__}: {error}")]
            failed = True
        rows += got
        print(f"bench {name}: {time.monotonic() - t0:.0f} s", flush=True)
    elapsed = time.monotonic() - started
    info["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    info["torch_threads"] = args.threads
    print()
    print(markdown_table(rows))
    print(f"\nmachine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}, {info['date']}; "
          f"{elapsed:.0f} s in all")
    write_results(rows, args.out, info, elapsed, args.quick)
    print(f"wrote {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
