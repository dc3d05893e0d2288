"""
Report a mutmut run over the pure core: the score and the survivors.

Run by ``nox -s mutation`` after ``mutmut run``, from the project's root::

    python -m tests.mutation_report --fail-under 98

The score is the share of detected mutants (killed, timed out, or caught by
the type checker) among the mutants that are not equivalent. Equivalent
mutants (they change no behaviour, so no test can kill them) are listed in
``mutation.toml``, each with the line the mutant changes and the reason; an
entry whose mutant is gone, no longer makes that change, or is detected
other than by a timeout fails the report, so that the list stays true as
the code moves. One that timed out is only named: an equivalent mutant that
merely runs slower, or runs on a loaded machine, can exceed mutmut's limit.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from collections import Counter
from pathlib import Path

import attrs
import tomllib


DETECTED = frozenset({"killed", "timeout", "caught by type check"})
UNFINISHED = frozenset({"not checked", "check was interrupted by user"})


@attrs.frozen(kw_only=True)
class Equivalent:
    """A mutant that changes no behaviour, and why."""

    mutant: str
    change: str
    reason: str


def mutmut(*args: str) -> str:
    """The output of one mutmut command."""
    done = subprocess.run(
        [sys.executable, "-m", "mutmut", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def results() -> dict[str, str]:
    """Every mutant's status, by name (``mutmut results --all true``)."""
    statuses = {}
    for line in mutmut("results", "--all", "true").splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and name.startswith("prebuilds."):
            statuses[name] = status
    return statuses


def load_equivalents(path: Path) -> list[Equivalent]:
    """The equivalent mutants listed in *path*."""
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    return [Equivalent(**entry) for entry in data.get("equivalent", [])]


def added_lines(mutant: str) -> list[str]:
    """The lines the mutant's diff adds, stripped."""
    return [
        line[1:].strip()
        for line in mutmut("show", mutant).splitlines()
        if line.startswith("+") and not line.startswith("+++")
    ]


def stale(equivalents: list[Equivalent], statuses: dict[str, str]) -> list[str]:
    """What is wrong with the list of equivalent mutants, if anything."""
    problems = []
    for entry in equivalents:
        if entry.mutant not in statuses:
            problems.append(f"{entry.mutant}: no such mutant")
        elif entry.change.strip() not in added_lines(entry.mutant):
            problems.append(f"{entry.mutant}: no longer changes {entry.change!r}")
        elif statuses[entry.mutant] in DETECTED - {"timeout"}:
            problems.append(f"{entry.mutant}: listed as equivalent, but detected")
    return problems


def timed_out(equivalents: list[Equivalent], statuses: dict[str, str]) -> list[str]:
    """The listed equivalent mutants that timed out (slower, not killed)."""
    return [e.mutant for e in equivalents if statuses.get(e.mutant) == "timeout"]


def main(argv: list[str] | None = None) -> int:
    """Print the score and the survivors; 1 below *--fail-under* or on a stale list."""
    parser = argparse.ArgumentParser(description="Report a mutmut run.")
    parser.add_argument("--equivalents", type=Path, default=Path("mutation.toml"))
    parser.add_argument("--fail-under", type=float, default=0.0)
    options = parser.parse_args(argv)

    statuses = results()
    equivalents = load_equivalents(options.equivalents)
    equivalent = {e.mutant for e in equivalents}
    counted = {m: s for m, s in statuses.items() if m not in equivalent}
    unfinished = sorted(m for m, s in counted.items() if s in UNFINISHED)
    survivors = sorted(m for m, s in counted.items() if s not in DETECTED | UNFINISHED)
    detected = sum(s in DETECTED for s in counted.values())
    score = 100.0 * detected / len(counted) if counted else 100.0

    print(f"{len(statuses)} mutants, {len(equivalent)} equivalent (mutation.toml)")
    for status, count in sorted(Counter(counted.values()).items()):
        print(f"  {status}: {count}")
    print(f"score: {detected}/{len(counted)} = {score:.1f} % of non-equivalent mutants")
    for mutant in survivors:
        print(f"\nsurvived ({counted[mutant]}): {mutant}")
        print(mutmut("show", mutant).rstrip())

    failed = False
    slow = timed_out(equivalents, statuses)
    if slow:
        print("\nlisted as equivalent, but timed out (slower, not killed):")
        print("  " + "\n  ".join(slow))
    problems = stale(equivalents, statuses)
    if problems:
        print("\nmutation.toml is out of date:\n  " + "\n  ".join(problems))
        failed = True
    if unfinished:
        print(f"\n{len(unfinished)} mutants were not checked: the run did not finish")
        failed = True
    if score < options.fail_under:
        print(f"\nscore {score:.1f} % is below {options.fail_under} %")
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
