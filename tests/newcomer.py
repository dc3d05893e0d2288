"""
What a newcomer meets, checked from inside a fresh virtual environment that
holds the prebuilds wheel, installed with no extras, and nothing else.

``nox -s newcomer`` builds the wheel, makes that environment and runs::

    python tests/newcomer.py --version VERSION --tutorial docs/embedding.md

(``--script-of PAGE`` prints a page's code as one script instead, which the
``typing`` session gives to pyright.)

from a directory outside the checkout, so that ``import prebuilds`` is the
installed wheel. It checks the command line (every sub-command, the exit
status and the one-line errors), runs the tutorial's code (it must need no
extra: a page that needs one says so first, and this session would install
exactly that), and checks that each feature of an extra names the command
that installs it. It uses nothing beyond the standard library and prebuilds,
and exits 1 with the list of what failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import doctest
import importlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import traceback

from collections.abc import Iterator
from pathlib import Path
from typing import Any


def run(*argv: str, status: int = 0) -> subprocess.CompletedProcess[str]:
    """Run *argv*; fail unless it exits with *status*."""
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != status:
        msg = (
            f"{' '.join(argv)} exited {result.returncode}, expected {status}\n"
            f"stdout: {result.stdout[-2000:]}\nstderr: {result.stderr[-2000:]}"
        )
        raise AssertionError(msg)
    return result


def one_line_error(result: subprocess.CompletedProcess[str], prog: str) -> None:
    """The error is one line on stderr, naming the program, no traceback."""
    lines = result.stderr.splitlines()
    if len(lines) != 1 or not lines[0].startswith(f"{prog}: error: "):
        msg = f"expected one line '{prog}: error: ...' on stderr, got {result.stderr!r}"
        raise AssertionError(msg)


# -- the tutorial's code -----------------------------------------------------------

FENCE = re.compile(r"^(`{3,}|~{3,})\s*(\S*)")


def python_blocks(text: str) -> Iterator[tuple[int, str]]:
    """
    The ```python blocks of a MyST page, with the line each starts on.

    ``% skip: next`` skips the next block, and ``% skip: start`` to
    ``% skip: end`` the blocks between, as Sybil's SkipParser does.
    """
    lines = text.splitlines()
    skip_next = skipping = False
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if line == "% skip: next":
            skip_next = True
        elif line == "% skip: start":
            skipping = True
        elif line == "% skip: end":
            skipping = False
        fence = FENCE.match(lines[i])
        if fence is None:
            i += 1
            continue
        end = next(
            (j for j in range(i + 1, len(lines)) if lines[j].startswith(fence[1])),
            len(lines),
        )
        if fence[2] == "python" and not (skip_next or skipping):
            yield i + 2, "\n".join(lines[i + 1 : end]) + "\n"
        if fence[2] == "python":
            skip_next = False
        i = end + 1


def script_of(path: Path) -> str:
    """
    A page's python blocks as one Python script (doctests become statements
    with their expected output as comments), for a type checker to read.
    """
    parts = []
    for _, code in python_blocks(path.read_text(encoding="utf-8")):
        is_doctest = code.lstrip().startswith(">>>")
        parts.append(doctest.script_from_examples(code) if is_doctest else code)
    return "\n".join(parts)


def run_page(path: Path) -> None:
    """
    Run a page's python blocks top to bottom in one namespace: a block that
    starts with ``>>>`` as a doctest, any other as a script.
    """
    namespace: dict[str, Any] = {"__name__": "__tutorial__"}
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    parser = doctest.DocTestParser()
    failed = 0
    for lineno, code in python_blocks(path.read_text(encoding="utf-8")):
        if code.lstrip().startswith(">>>"):
            test = parser.get_doctest(code, namespace, path.name, str(path), lineno)
            runner = doctest.DocTestRunner(optionflags=flags)
            failed += runner.run(test, clear_globs=False).failed
            namespace.update(test.globs)
        else:
            exec(compile(code, f"{path}:{lineno}", "exec"), namespace)  # noqa: S102
    if failed:
        msg = f"{failed} doctest example(s) of {path.name} failed (see above)"
        raise AssertionError(msg)


# -- the checks ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Env:
    """What the checks run in: the wheel's environment and a scratch directory."""

    version: str
    tutorial: Path
    tmp: Path

    @property
    def prebuilds(self) -> list[str]:
        """The console script."""
        bin_dir = Path(sys.executable).parent
        return [
            shutil.which("prebuilds", path=str(bin_dir)) or str(bin_dir / "prebuilds")
        ]

    @property
    def module(self) -> list[str]:
        """``python -m prebuilds``."""
        return [sys.executable, "-m", "prebuilds"]

    @property
    def both(self) -> list[tuple[list[str], str]]:
        """Each way to run the command line, with the name it should give."""
        return [(self.prebuilds, "prebuilds"), (self.module, "python -m prebuilds")]


def plain_install(env: Env) -> None:
    """A plain install: no extra's module is importable."""
    present = [
        m
        for m in ("hypothesis", "psycopg", "psycopg_pool")
        if importlib.util.find_spec(m)
    ]
    assert not present, f"installed, so this proves nothing: {present}"


def installed_wheel(env: Env) -> None:
    """prebuilds is the installed wheel, not the checkout, at the wheel's version."""
    import prebuilds

    assert Path(prebuilds.__file__).is_relative_to(sys.prefix), prebuilds.__file__
    assert env.version == prebuilds.__version__, prebuilds.__version__
    assert Path(env.prebuilds[0]).is_file(), f"no console script {env.prebuilds[0]}"


def version(env: Env) -> None:
    """prebuilds --version and python -m prebuilds --version."""
    for argv, _ in env.both:
        out = run(*argv, "--version").stdout
        assert f"prebuilds {env.version}\n" == out, out


def first_command(env: Env) -> None:
    """python -m prebuilds, the README's first command, simulates a day."""
    result = run(*env.module)
    assert "claims: " in result.stdout, result.stdout
    assert "" == result.stderr, result.stderr


def help_text(env: Env) -> None:
    """--help names the program as it was run, without reST markup."""
    for argv, name in env.both:
        out = run(*argv, "--help").stdout
        assert out.startswith(f"usage: {name} "), out
        assert "``" not in out, out
        missing = [c for c in ("simulate", "plan", "status") if c not in out]
        assert not missing, out


def plan(env: Env) -> None:
    """prebuilds plan, and plan --json."""
    assert "action:" in run(*env.prebuilds, "plan").stdout
    document = json.loads(run(*env.prebuilds, "plan", "--json").stdout)
    assert {"now", "preset", "state", "actions"} <= set(document), document


def simulate_then_status(env: Env) -> None:
    """prebuilds simulate --db FILE --json, then status FILE, in text and JSON."""
    db = str(env.tmp / "pools.sqlite3")
    argv = [*env.prebuilds, "simulate", "--hours", "3", "--db", db, "--json"]
    document = json.loads(run(*argv).stdout)
    assert 3 == len(document["samples"]), document
    assert "paused:" in run(*env.prebuilds, "status", db).stdout
    status = json.loads(run(*env.prebuilds, "status", db, "--json").stdout)
    assert ["gpu", "small"] == sorted(p["preset_name"] for p in status["presets"]), (
        status
    )


def refused_arguments(env: Env) -> None:
    """Refused arguments: one line on stderr, exit 2, nothing created."""
    for argv, name in env.both:
        one_line_error(run(*argv, "simulate", "--hours", "-5", status=2), name)
    one_line_error(run(*env.prebuilds, "nonsense", status=2), "prebuilds")
    missing = env.tmp / "missing.sqlite3"
    one_line_error(run(*env.prebuilds, "status", str(missing), status=2), "prebuilds")
    assert not missing.exists(), "status created the file it was given"


def status_of_another_file(env: Env) -> None:
    """status on a file that is not a prebuilds database: exit 1, one line."""
    other = env.tmp / "notes.txt"
    other.write_text("not a database\n", encoding="utf-8")
    one_line_error(run(*env.prebuilds, "status", str(other), status=1), "prebuilds")
    assert "not a database\n" == other.read_text(encoding="utf-8")


def fakes_need_no_extra(env: Env) -> None:
    """from prebuilds.testing import FakeClock, FakeProvisioner: no extra needed."""
    from prebuilds.testing import FakeClock, FakeProvisioner

    assert callable(FakeClock)
    assert callable(FakeProvisioner)


#: Each feature of an extra ("module:attribute"), and the extra.
EXTRAS = {
    "prebuilds.stores:PostgresStore": "postgres",
    "prebuilds.testing:check_store": "testing",
    "prebuilds.testing:check_claimer": "testing",
    "prebuilds.testing:check_concurrent_claims": "testing",
    "prebuilds.testing:PoolMachine": "testing",
    "prebuilds.testing:strategies": "testing",
    "prebuilds.testing.strategies:": "testing",
}


def missing_extras(env: Env) -> None:
    """Without its extra, each feature raises MissingExtraError with the pip command."""
    from prebuilds.exceptions import MissingExtraError

    wrong = []
    for target, extra in EXTRAS.items():
        module_name, _, attribute = target.partition(":")
        command = f"pip install 'prebuilds[{extra}]'"
        try:
            module = importlib.import_module(module_name)
            if attribute:
                getattr(module, attribute)
        except MissingExtraError as e:
            if command not in str(e):
                wrong.append(f"{target}: {e!r}")
        else:
            wrong.append(f"{target}: imported without the {extra!r} extra")
    assert not wrong, wrong


def tutorial(env: Env) -> None:
    """The tutorial's code runs, top to bottom, on a plain install."""
    previous = Path.cwd()
    with tempfile.TemporaryDirectory() as cwd:
        os.chdir(cwd)
        try:
            run_page(env.tutorial)
        finally:
            os.chdir(previous)


CHECKS = [
    plain_install,
    installed_wheel,
    version,
    first_command,
    help_text,
    plan,
    simulate_then_status,
    refused_arguments,
    status_of_another_file,
    fakes_need_no_extra,
    missing_extras,
    tutorial,
]


def main() -> int:
    """Run every check; 0 if all passed, else 1."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--version", help="the wheel's version")
    parser.add_argument("--tutorial", type=Path, help="the page to run")
    parser.add_argument(
        "--script-of", type=Path, help="print a page's code as one script, and exit"
    )
    args = parser.parse_args()
    if args.script_of is not None:
        print(script_of(args.script_of))
        return 0
    if args.version is None or args.tutorial is None:
        parser.error("--version and --tutorial are required")
    failures = []
    with tempfile.TemporaryDirectory(prefix="newcomer-") as tmp:
        env = Env(version=args.version, tutorial=args.tutorial, tmp=Path(tmp))
        for check in CHECKS:
            what = (check.__doc__ or check.__name__).strip()
            try:
                check(env)
            except (
                Exception
            ) as e:  # every failure is reported, then the next check runs
                failures.append(f"{check.__name__}: {type(e).__name__}: {e}")
                print(f"FAIL {what}\n{traceback.format_exc()}", flush=True)
            else:
                print(f"ok   {what}", flush=True)
    if failures:
        print(f"\n{len(failures)} check(s) failed:", *failures, sep="\n- ")
        return 1
    print(f"\nevery check passed ({len(CHECKS)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
