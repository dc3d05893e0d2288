"""
Every check runs through here: ``nox`` runs the default sessions.

The tests run on every supported Python that is installed; ``lint``,
``typing``, ``docs``, ``newcomer``, ``stateful`` and ``coverage`` run on the
newest one installed. Outside CI, the tests of a Python that is missing are
skipped, and ``coverage``, the last session, ends the run with a loud list
of them; in CI (``CI`` set) a missing Python fails the run.

Sessions run in parallel, one more than the CPUs (``nox --parallel 1`` runs
them one after the other, with their output as it comes).
"""

from __future__ import annotations

import os
import shutil
import sys

from pathlib import Path

import nox


nox.needs_version = ">=2026.10.20"  # --parallel with requires=
nox.options.default_venv_backend = "uv|virtualenv"
nox.options.download_python = "never"
CI = bool(os.environ.get("CI"))
nox.options.error_on_missing_interpreters = CI
nox.options.reuse_venv = "yes"
# Each session is a process of its own (its own venv, coverage file and
# PostgreSQL cluster), so they run side by side: one more than the CPUs,
# since the tests spend much of their time waiting (PostgreSQL restarts,
# leases that expire, processes) and another session computes meanwhile.
# (Two per CPU measured no better here, and loads the machine more.)
nox.options.parallel = (os.cpu_count() or 1) + 1
nox.options.allow_parallel = True
# The longest sessions first (parallel sessions start in this order);
# coverage last: it waits for every tests session anyway, and ends the run
# with the list of Pythons whose tests did not run.
nox.options.sessions = [
    "lint",
    "stateful",
    "tests",
    "typing",
    "docs",
    "newcomer",
    "coverage",
]

ROOT = Path(__file__).parent
PYPROJECT = nox.project.load_toml("pyproject.toml")
PYTHONS = nox.project.python_versions(PYPROJECT)
LATEST = PYTHONS[-1]


def _installed(version: str) -> bool:
    """Whether nox will find a Python *version* (it asks python-discovery too)."""
    from python_discovery import get_interpreter  # noqa: PLC0415 - nox's own dependency

    return get_interpreter(version) is not None


#: The newest supported Python that is installed: the single-Python sessions
#: run on it, and the tests run the full Hypothesis profile on it.
NEWEST = next((v for v in reversed(PYTHONS) if _installed(v)), LATEST)

#: The pure core, held to 100 % branch coverage.
CORE = ",".join(
    f"prebuilds/{name}.py"
    for name in (
        "_calculate",
        "_model",
        "_schedule",
        "_validate",
        "_noop",
        "_lifecycle",
        "exceptions",
    )
)


def group(*names: str) -> list[str]:
    return list(nox.project.dependency_groups(PYPROJECT, *names))


# -- sessions ---------------------------------------------------------------------


@nox.session(python=NEWEST, default=False)
def coverage_erase(session: nox.Session) -> None:
    """Remove coverage data of an earlier run."""
    session.install("coverage[toml]")
    session.run("coverage", "erase")


#: The tests that drive Hypothesis state machines over every store: the
#: heaviest by far. On the newest Python they run in a session of their own
#: (``stateful``), beside its other tests and without the coverage tracer;
#: the pure core's 100 % does not depend on them.
STATE_MACHINES = ["tests/test_stateful.py", "tests/test_conformance_kit.py"]

#: The slowest tests are listed, so that none stays slower than it must be.
DURATIONS = "--durations=15"


# Newest first: parallel sessions start in this order.
@nox.session(python=PYTHONS[::-1], requires=["coverage_erase"])
def tests(session: nox.Session) -> None:
    """
    Unit, property, stateful, PostgreSQL and doc tests.

    The newest Python runs them under coverage with Hypothesis's full
    profile, but for the state machines (the ``stateful`` session). The
    others run all of them without the tracer and with the lighter
    ``ci-light`` profile: they check the code on their Python, and the code
    has no path of its own for any of them.
    """
    session.install("-e", ".[postgres,testing,prometheus,cli]", *group("tests"))
    if session.python == NEWEST:
        ignore = [f"--ignore={path}" for path in STATE_MACHINES]
        session.run(
            "coverage",
            "run",
            "-m",
            "pytest",
            *ignore,
            DURATIONS,
            *session.posargs,
            env={"COVERAGE_FILE": f".coverage.{session.python}"},
        )
    else:
        session.run(
            "pytest", DURATIONS, "--hypothesis-profile=ci-light", *session.posargs
        )


@nox.session(python=NEWEST)
def stateful(session: nox.Session) -> None:
    """The state machines on the newest Python, full profile, no tracer."""
    session.install("-e", ".[postgres,testing,prometheus,cli]", *group("tests"))
    session.run("pytest", *STATE_MACHINES, DURATIONS, *session.posargs)


@nox.session(python=NEWEST, requires=["tests"])
def coverage(session: nox.Session) -> None:
    """
    Report the coverage of the newest Python's tests, with the gates; list,
    loudly, the Pythons whose tests did not run.
    """
    not_run = [python for python in PYTHONS if not _installed(python)]
    if not_run:
        _shout(session, not_run)
    session.install("coverage[toml]")
    session.run("coverage", "combine")
    session.run("coverage", "report")
    # The pure core is held to 100 % branch coverage.
    session.run("coverage", "report", "--fail-under=100", f"--include={CORE}")
    # The command line is tested too (tests/test_cli.py).
    session.run(
        "coverage",
        "report",
        "--fail-under=90",
        "--include=prebuilds/__main__.py,prebuilds/_simulate.py",
    )


def _shout(session: nox.Session, not_run: list[str]) -> None:
    """Say loudly that the tests of *not_run* Pythons did not run."""
    bar = "!" * 78
    sessions = ", ".join(f"tests-{python}" for python in not_run)
    lines = [
        bar,
        f"!! NOT RUN: {sessions}",
        "!! This run checked less than CI does. Install the missing Pythons",
        f"!! (for example `uv python install {' '.join(not_run)}`), or run the",
        "!! sessions you mean on purpose: `nox -s tests-3.13`, `nox -s lint`.",
        bar,
    ]
    session.warn("\n" + "\n".join(lines))
    if CI:
        session.error(f"in CI every Python's tests must run: {sessions} did not")


@nox.session(python=NEWEST, default=False)
def thorough(session: nox.Session) -> None:
    """The tests with the thorough Hypothesis profile (long: not in CI)."""
    session.install("-e", ".[postgres,testing,prometheus,cli]", *group("tests"))
    session.run(
        "pytest",
        "--numprocesses=auto",
        "--dist=loadscope",
        "--hypothesis-profile=thorough",
        *session.posargs,
    )


@nox.session(python=NEWEST)
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install(*group("lint"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=NEWEST)
def typing(session: nox.Session) -> None:
    """
    mypy --strict over the package, the tests and the benchmarks; pyright
    over the tutorial's code, and its verdict on the completeness of the
    public API's types.
    """
    session.install(
        "-e", ".[postgres,testing,prometheus,cli]", *group("typing", "bench")
    )
    session.run("mypy", *session.posargs)
    tmp = Path(session.create_tmp()).resolve()
    # The tutorial's code, as a reader copies it, passes pyright.
    tutorial = tmp / "tutorial.py"
    with tutorial.open("w", encoding="utf-8") as script:
        session.run(
            "python",
            "tests/newcomer.py",
            "--script-of",
            "docs/embedding.md",
            stdout=script,
        )
    # From outside the checkout, so that pyright resolves the package through
    # the environment, as a user's type checker would.
    with session.chdir(tmp):
        session.run("pyright", tutorial.name)
        session.run("pyright", "--verifytypes", "prebuilds", "--ignoreexternal")


@nox.session(python=NEWEST)
def docs(session: nox.Session) -> None:
    """Build the docs, nitpicky, warnings as errors (examples run in tests)."""
    session.install("-e", ".[postgres,testing,prometheus,cli]", *group("docs"))
    session.run(
        "sphinx-build",
        "-n",
        "-T",
        "-W",
        "--keep-going",
        "-b",
        "html",
        "-d",
        "docs/_build/doctrees",
        "docs",
        "docs/_build/html",
    )


@nox.session(python=NEWEST, reuse_venv=False)
def newcomer(session: nox.Session) -> None:
    """
    What a new user gets: the wheel, installed with no extras into a fresh
    virtual environment, runs the command line, the tutorial and names the
    extras it lacks (``tests/newcomer.py`` checks each).
    """
    tmp = Path(session.create_tmp()).resolve()
    dist = tmp / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    if session.venv_backend == "uv":
        session.run("uv", "build", "--out-dir", str(dist), "--quiet")
    else:
        session.install("build")
        session.run("python", "-m", "build", "--outdir", str(dist))
    [wheel] = dist.glob("prebuilds-*.whl")
    [sdist] = dist.glob("prebuilds-*.tar.gz")
    session.log(f"built {wheel.name} and {sdist.name}")
    # A plain venv with pip, as a newcomer makes one: nothing of nox's.
    venv = tmp / "newcomer-venv"
    session.run("python", "-m", "venv", "--clear", str(venv))
    python = str(venv / ("Scripts" if sys.platform == "win32" else "bin") / "python")
    session.run(
        python,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        str(wheel),
        external=True,
    )
    version = wheel.name.split("-")[1]
    # Outside the checkout, so that the installed wheel is what is imported.
    with session.chdir(tmp):
        session.run(
            python,
            str(ROOT / "tests" / "newcomer.py"),
            "--version",
            version,
            "--tutorial",
            str(ROOT / "docs" / "embedding.md"),
            external=True,
        )


@nox.session(python=NEWEST, default=False)
def bench(session: nox.Session) -> None:
    """Benchmarks; writes JSON results to bench/results/."""
    session.install("-e", ".[postgres,testing,prometheus,cli]", *group("bench"))
    session.run("python", "-m", "bench", *session.posargs)


# -- mutation testing of the pure core (not in the default set) ------------------
@nox.session(python=NEWEST, default=False)
def mutation(session: nox.Session) -> None:
    """
    mutmut over the pure core with the core tests; prints the score and the
    survivors, and fails below 98 % of non-equivalent mutants (the
    equivalent ones are listed in mutation.toml). ``-- --reuse`` keeps the
    results of the last run (mutmut re-runs what changed).
    """
    session.install("-e", ".[testing]", *group("mutation"))
    reuse = "--reuse" in session.posargs
    if not reuse:
        session.run("python", "-c", "import shutil; shutil.rmtree('mutants', True)")
    session.run("mutmut", "run", "--max-children", str(os.cpu_count() or 2))
    session.run("python", "-m", "tests.mutation_report", "--fail-under", "98")
