"""Every check runs through here: ``nox`` runs the default sessions."""

from __future__ import annotations

import os

import nox


nox.needs_version = ">=2025.10.14"
nox.options.default_venv_backend = "uv|virtualenv"
nox.options.download_python = "never"
nox.options.error_on_missing_interpreters = bool(os.environ.get("CI"))
nox.options.reuse_venv = "yes"
nox.options.sessions = ["tests", "coverage", "lint", "typing", "docs"]

PYPROJECT = nox.project.load_toml("pyproject.toml")
PYTHONS = nox.project.python_versions(PYPROJECT)
LATEST = PYTHONS[-1]
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


@nox.session(python=LATEST, default=False)
def coverage_erase(session: nox.Session) -> None:
    """Remove coverage data of an earlier run."""
    session.install("coverage[toml]")
    session.run("coverage", "erase")


@nox.session(python=PYTHONS, requires=["coverage_erase"])
def tests(session: nox.Session) -> None:
    """Unit, property, stateful, PostgreSQL and doc tests, under coverage."""
    session.install("-e", ".[postgres,testing]", *group("tests"))
    session.run(
        "coverage",
        "run",
        "-m",
        "pytest",
        *session.posargs,
        env={"COVERAGE_FILE": f".coverage.{session.python}"},
    )


@nox.session(python=LATEST, requires=["tests"])
def coverage(session: nox.Session) -> None:
    """Combine coverage of every Python and report it."""
    session.install("coverage[toml]")
    session.run("coverage", "combine")
    session.run("coverage", "report")
    # The pure core is held to 100 % branch coverage.
    session.run("coverage", "report", "--fail-under=100", f"--include={CORE}")


@nox.session(python=LATEST)
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install(*group("lint"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=LATEST)
def typing(session: nox.Session) -> None:
    """mypy --strict over the package, the tests and the benchmarks."""
    session.install("-e", ".[postgres,testing]", *group("typing", "bench"))
    session.run("mypy", *session.posargs)


@nox.session(python=LATEST)
def docs(session: nox.Session) -> None:
    """Build the docs, nitpicky, warnings as errors (examples run in tests)."""
    session.install("-e", ".[postgres,testing]", *group("docs"))
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


@nox.session(python=LATEST, default=False)
def bench(session: nox.Session) -> None:
    """Benchmarks; writes JSON results to bench/results/."""
    session.install("-e", ".[postgres,testing]", *group("bench"))
    session.run("python", "-m", "bench", *session.posargs)


# -- mutation testing of the pure core (not in the default set) ------------------
@nox.session(python=LATEST, default=False)
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
