"""
Benchmarks: ``python -m bench [--only NAME] [--quick]``.

Every ``bench/bench_<name>.py`` module defines ``run(*, quick: bool = False)
-> dict`` returning JSON-serialisable results (and may define
``summarize(results) -> str`` for a human summary). The runner imports each,
runs it, prints a summary and writes ``bench/results/<name>.json``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import time
import traceback

from datetime import datetime, timezone
from pathlib import Path
from typing import Any


HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def discover() -> list[str]:
    """The names of the benchmarks, ``bench_calculate.py`` -> ``calculate``."""
    return sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))


def _summary(name: str, module: Any, results: dict[str, Any]) -> str:
    summarize = getattr(module, "summarize", None)
    if summarize is not None:
        return str(summarize(results))
    scalars = {
        k: v for k, v in results.items() if isinstance(v, (int, float, str, bool))
    }
    lines = [f"{name}:"]
    lines += [
        f"  {k}: {v:.6g}" if isinstance(v, float) else f"  {k}: {v}"
        for k, v in scalars.items()
    ]
    return "\n".join(lines)


def run_one(name: str, *, quick: bool, results_dir: Path = RESULTS) -> dict[str, Any]:
    """Run the benchmark *name*, write its JSON file and return the record."""
    module = importlib.import_module(f"bench.bench_{name}")
    started = time.perf_counter()
    results: dict[str, Any] = module.run(quick=quick)
    record = {
        "benchmark": name,
        "quick": quick,
        "started_at": datetime.now(timezone.utc).isoformat(),
        "wall_s": time.perf_counter() - started,
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "results": results,
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{name}.json"
    path.write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
    print(_summary(name, module, results))
    print(f"  -> {path}")
    return record


def _run_reporting(name: str, *, quick: bool) -> bool:
    """Run one benchmark; on an error print it and return False."""
    try:
        run_one(name, quick=quick)
    except Exception:  # noqa: BLE001  # one broken benchmark must not hide the rest
        traceback.print_exc()
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the chosen benchmarks."""
    names = discover()
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help=f"run only this benchmark (repeatable); one of: {', '.join(names)}",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smaller inputs, fewer repeats"
    )
    args = parser.parse_args(argv)
    chosen = names
    if args.only:
        wanted = [n.removeprefix("bench_").removesuffix(".py") for n in args.only]
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
        chosen = [n for n in names if n in wanted]
    failed = [name for name in chosen if not _run_reporting(name, quick=args.quick)]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
