"""
The command line: every command in text and JSON, exit statuses, refused
arguments, one-line errors, the program's name, and ``status`` only reading.

Most tests call :func:`prebuilds.__main__.main` in-process with their own
streams; a few run the real ``python -m prebuilds`` to check what only a
process shows (the program's name, the exit status).
"""

# Asserts read ``expected == actual`` (the project's test style).

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import subprocess
import sys
import uuid

from contextlib import closing
from datetime import datetime, timedelta, timezone
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import attrs
import pytest

import prebuilds

from prebuilds import __main__ as cli
from prebuilds import _simulate
from prebuilds.exceptions import InvalidInputError, StoreError
from prebuilds.stores import MemoryStore, SQLiteStore
from prebuilds.testing import FakeClock


class Run:
    """The outcome of one in-process run of the command line."""

    def __init__(self, status: int, out: str, err: str) -> None:
        self.status = status
        self.out = out
        self.err = err

    def json(self) -> Any:
        return json.loads(self.out)


def run(*argv: str, prog: str = "prebuilds", **kwargs: Any) -> Run:
    out, err = io.StringIO(), io.StringIO()
    status = cli.main(list(argv), prog=prog, out=out, err=err, **kwargs)
    return Run(status, out.getvalue(), err.getvalue())


def assert_usage_error(result: Run, words: str, prog: str = "prebuilds") -> None:
    """Exit 2, nothing on stdout, one line on stderr naming the problem."""
    assert (2, "") == (result.status, result.out)
    [line] = result.err.splitlines()
    assert line.startswith(f"{prog}: error: "), line
    assert words in line, line


#: When the ``pools`` database was built, and the clock ``status`` reads.
T0 = datetime(2026, 1, 5, tzinfo=timezone.utc)


def at_t0() -> FakeClock:
    return FakeClock(T0 + timedelta(seconds=10))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(name="pools", scope="module")
def _pools(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """
    A database of two pools, built at :data:`T0`: small is full; of big's
    three builds the first failed, so it backs off.
    """
    from prebuilds import PresetConfig, StoreReconciler, Template
    from prebuilds.testing import FakeClock, FakeProvisioner

    path = tmp_path_factory.mktemp("cli") / "status.sqlite3"
    clock = FakeClock(T0)
    with SQLiteStore(path) as store:
        template = Template(
            id=uuid.UUID(int=1), active_version_id=uuid.UUID(int=2), name="python"
        )
        store.put_template(template)
        for n, name, desired in ((3, "big", 3), (4, "small", 2)):
            store.put_preset(
                PresetConfig(
                    id=uuid.UUID(int=n),
                    template_id=template.id,
                    template_version_id=template.active_version_id,
                    desired_instances=desired,
                    name=name,
                )
            )
        provisioner = FakeProvisioner(store, clock, build_time=timedelta(0))
        provisioner.fail_next(1)
        reconciler = StoreReconciler(
            store, provisioner, clock=clock, max_workers=1, submit_timeout=None
        )
        reconciler.reconcile_all()  # big: 3 builds, the first fails; small: 2
        provisioner.process()
    return path


@pytest.fixture(name="db", scope="module")
def _db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prebuilds database, written by a three-hour simulation."""
    path = tmp_path_factory.mktemp("cli") / "pools.sqlite3"
    assert 0 == run("simulate", "--hours", "3", "--db", str(path)).status
    return path


class TestSimulate:
    """``simulate``, the default command."""

    def test_the_default_command_simulates_a_day(self) -> None:
        """No command: 24 hourly lines between the store and the totals, exit 0."""
        result = run()

        lines = result.out.splitlines()
        assert (0, "") == (result.status, result.err)
        assert lines[0].startswith("store: SQLite at ")
        assert lines[1].startswith("time (UTC)")
        assert 24 == sum(1 for line in lines if line.startswith("Mon "))
        assert lines[-1].startswith("claims: ")

    def test_json(self) -> None:
        """--json: the totals and one sample per hour, each pool's counts."""
        document = run("simulate", "--hours", "2", "--seed", "3", "--json").json()

        assert {
            "db": None,
            "hours": 2,
            "seed": 3,
        }.items() <= document.items()
        assert document["claims"] == document["warm"] + document["cold"]
        assert 0.0 <= document["hit_rate"] <= 1.0
        assert ["2025-06-02T00:00:00+00:00", "2025-06-02T01:00:00+00:00"] == [
            s["at"] for s in document["samples"]
        ]
        assert [["small", "gpu"]] * 2 == [
            [p["name"] for p in s["pools"]] for s in document["samples"]
        ]
        assert {"name", "want", "ready", "failed"} == set(
            document["samples"][0]["pools"][0]
        )

    def test_json_before_the_command(self) -> None:
        """--json may come before the command, as a global option."""
        result = run("--json", "simulate", "--hours", "1")

        assert 1 == len(result.json()["samples"])

    def test_the_same_seed_repeats(self) -> None:
        """A simulation is a function of its seed."""
        first = run("simulate", "--hours", "3", "--seed", "7", "--json").json()
        again = run("simulate", "--hours", "3", "--seed", "7", "--json").json()

        assert first == again

    def test_db_keeps_the_store(self, tmp_path: Path) -> None:
        """--db FILE: the simulated store is kept there, with its two presets."""
        path = tmp_path / "kept.sqlite3"

        result = run("simulate", "--hours", "1", "--db", str(path))

        assert 0 == result.status
        assert f"store: SQLite at {path}" == result.out.splitlines()[0]
        with SQLiteStore(path) as store:
            assert 2 == len(store.read_pool().presets)

    def test_db_that_exists_is_refused(self, tmp_path: Path) -> None:
        """--db never writes into an existing file (a host's database, say)."""
        path = tmp_path / "host.sqlite3"
        path.write_bytes(b"the host's data")

        result = run("simulate", "--db", str(path))

        assert_usage_error(result, "exists")
        assert b"the host's data" == path.read_bytes()

    def test_db_in_a_missing_directory_is_refused(self, tmp_path: Path) -> None:
        """--db in a directory that does not exist: a usage error naming it."""
        result = run("simulate", "--db", str(tmp_path / "nowhere" / "x.sqlite3"))

        assert_usage_error(result, "no such directory")

    @pytest.mark.parametrize(
        ("argv", "words"),
        [
            (["--hours", "-5"], "argument --hours: must be from 1 to 720, got -5"),
            (["--hours", "0"], "must be from 1 to 720, got 0"),
            (["--hours", "721"], "must be from 1 to 720, got 721"),
            (["--hours", "2.5"], "must be an integer, got '2.5'"),
            (["--hours"], "expected one argument"),
            (["--seed", "-1"], "argument --seed: must be 0 or more, got -1"),
            (["--seed", "x"], "must be an integer, got 'x'"),
            (["--days", "1"], "unrecognized arguments: --days 1"),
        ],
    )
    def test_refused_arguments(self, argv: list[str], words: str) -> None:
        """Bad arguments: exit 2, one line naming the argument and the value."""
        assert_usage_error(run("simulate", *argv), words)


class TestPlan:
    """``plan``: the calculator's decision for the built-in example."""

    def test_text(self) -> None:
        """The example's state and actions: delete the expired one, create two, back off."""
        result = run("plan")

        assert (0, "") == (result.status, result.err)
        assert [
            "action:    delete 00000000-0000-0000-0000-000000000064",
            "action:    create 2",
            "after 3 failed builds:",
            "action:    backoff until 2025-06-02T09:33:00+00:00",
        ] == result.out.splitlines()[-4:]

    def test_json(self) -> None:
        """--json: the preset, the split, the state and both sets of actions."""
        document = run("plan", "--json").json()

        assert {
            "now": "2025-06-02T09:30:00+00:00",
            "preset": {
                "id": "00000000-0000-0000-0000-000000000001",
                "name": "small",
                "desired_instances": 1,
                "ttl": 21600.0,
                "scheduling_timezone": "Europe/Berlin",
                "schedules": [{"cron": "* 8-17 * * 1-5", "instances": 4}],
            },
            "running": [
                "00000000-0000-0000-0000-000000000065",
                "00000000-0000-0000-0000-000000000066",
            ],
            "expired": ["00000000-0000-0000-0000-000000000064"],
            "state": {
                "actual": 3,
                "expired": 1,
                "desired": 4,
                "eligible": 2,
                "extraneous": 0,
                "starting": 0,
                "stopping": 0,
                "deleting": 0,
            },
            "actions": [
                {
                    "action_type": "delete",
                    "create": 0,
                    "delete_ids": ["00000000-0000-0000-0000-000000000064"],
                    "backoff_until": None,
                },
                {
                    "action_type": "create",
                    "create": 2,
                    "delete_ids": [],
                    "backoff_until": None,
                },
            ],
            "after_3_failures": {
                "actions": [
                    {
                        "action_type": "backoff",
                        "create": 0,
                        "delete_ids": [],
                        "backoff_until": "2025-06-02T09:33:00+00:00",
                    }
                ]
            },
        } == document

    def test_takes_no_arguments(self) -> None:
        """plan refuses an argument it does not know."""
        assert_usage_error(run("plan", "extra"), "unrecognized arguments: extra")


class TestStatus:
    """``status FILE``: reads a prebuilds database and never writes."""

    def test_text(self, pools: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without rich: a header, then one aligned row per preset."""
        monkeypatch.setitem(sys.modules, "rich", None)

        result = run("status", str(pools), clock=at_t0())

        assert (0, "") == (result.status, result.err)
        assert [
            f"database: {pools}",
            "at:       2026-01-05 00:00:10 UTC",
            "paused:   no",
            "TEMPLATE  PRESET  DESIRED  RUNNING  READY  STARTING  FAILED  REASON",
            (
                "python    big     3        2        2      0         1       "
                "backing off until 00:01 UTC after 1 failed build"
            ),
            (
                "python    small   2        2        2      0         0       "
                "full: 2 of 2 ready"
            ),
        ] == result.out.splitlines()

    def test_rich_table(self, pools: Path) -> None:
        """With rich (the cli extra): the same rows in a table."""
        result = run("status", str(pools), clock=at_t0())

        assert 0 == result.status
        text = result.out
        assert "┃ TEMPLATE" in text
        assert "│ full: 2 of 2 ready" in text
        assert "backing off until 00:01 UTC after 1 failed build" in text

    def test_json(self, pools: Path) -> None:
        """--json: the database, when, paused, and every PoolStatus by name."""
        document = run("status", "--json", str(pools), clock=at_t0()).json()

        assert {"db", "at", "paused", "presets"} == set(document)
        assert (str(pools), False) == (document["db"], document["paused"])
        assert [[f.name for f in attrs.fields(prebuilds.PoolStatus)]] * 2 == [
            list(p) for p in document["presets"]
        ]
        big, small = document["presets"]
        assert {
            "preset_name": "big",
            "template_name": "python",
            "desired": 3,
            "desired_source": "base",
            "failed_kept": 1,
            "recent_failures": 1,
            "backoff_until": "2026-01-05T00:01:00+00:00",
            "next_change": None,
            "hard_limited": False,
            "reason": "backing off until 00:01 UTC after 1 failed build",
        }.items() <= big.items()
        assert {
            "preset_name": "small",
            "desired": 2,
            "running": 2,
            "eligible": 2,
            "reason": "full: 2 of 2 ready",
        }.items() <= small.items()
        assert "2026-01-05T00:00:10+00:00" == document["at"]

    def test_watch_redraws_until_interrupted(
        self, pools: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """--watch: a round, a wait, … until Ctrl-C, which ends it with 0."""
        monkeypatch.setitem(sys.modules, "rich", None)
        waits: list[float] = []

        def sleep(seconds: float) -> None:
            waits.append(seconds)
            if len(waits) == 3:
                raise KeyboardInterrupt

        out, err = io.StringIO(), io.StringIO()
        status = cli.main(
            ["status", "--watch", "2.5", str(pools)],
            out=out,
            err=err,
            sleep=sleep,
            clock=at_t0(),
        )

        assert (0, "", [2.5, 2.5, 2.5]) == (status, err.getvalue(), waits)
        assert 3 == out.getvalue().count(f"database: {pools}")

    def test_watch_json_is_one_document_per_line(self, pools: Path) -> None:
        """--watch --json: JSON Lines, one document a round."""
        rounds = iter([None, KeyboardInterrupt])

        def sleep(seconds: float) -> None:
            if next(rounds) is KeyboardInterrupt:
                raise KeyboardInterrupt

        out = io.StringIO()
        status = cli.main(
            ["status", "--json", "--watch", "1", str(pools)],
            out=out,
            sleep=sleep,
            clock=at_t0(),
        )

        lines = out.getvalue().splitlines()
        assert (0, 2) == (status, len(lines))
        assert [["big", "small"]] * 2 == [
            [p["preset_name"] for p in json.loads(line)["presets"]] for line in lines
        ]

    @pytest.mark.parametrize(
        ("seconds", "words"),
        [
            ("0", "must be from 0.1 to 86400 seconds, got 0"),
            ("soon", "must be a number of seconds, got 'soon'"),
            ("90000", "must be from 0.1 to 86400 seconds"),
        ],
    )
    def test_watch_needs_seconds(self, pools: Path, seconds: str, words: str) -> None:
        """--watch takes 0.1 to 86,400 seconds."""
        assert_usage_error(run("status", "--watch", seconds, str(pools)), words)

    def test_the_simulation_explains_itself(self, db: Path) -> None:
        """A simulated day's file: a row per preset, each with a reason."""
        document = run("status", "--json", str(db)).json()

        assert ["gpu", "small"] == sorted(p["preset_name"] for p in document["presets"])
        assert all(p["reason"] for p in document["presets"])

    def test_an_empty_database(self, tmp_path: Path) -> None:
        """A prebuilds database with no presets says so."""
        path = tmp_path / "empty.sqlite3"
        SQLiteStore(path).close()

        result = run("status", str(path))

        assert "no presets" == result.out.splitlines()[-1]

    def test_paused(self, tmp_path: Path) -> None:
        """A paused store shows as paused."""
        path = tmp_path / "paused.sqlite3"
        with SQLiteStore(path) as store:
            store.set_paused(True)

        assert "paused:   yes" in run("status", str(path)).out.splitlines()

    def test_only_reads(self, db: Path) -> None:
        """status leaves the file exactly as it was, byte for byte."""
        before = digest(db)

        assert 0 == run("status", str(db)).status
        assert 0 == run("status", "--json", str(db)).status

        assert before == digest(db)

    def test_a_missing_file_is_not_created(self, tmp_path: Path) -> None:
        """A path that does not exist: exit 2 naming it, and no file appears."""
        path = tmp_path / "typo.db"

        result = run("status", str(path))

        assert_usage_error(result, f"no such file: {str(path)!r}")
        assert [] == list(tmp_path.iterdir())

    def test_a_directory_is_refused(self, tmp_path: Path) -> None:
        """A directory is not a database file."""
        assert_usage_error(run("status", str(tmp_path)), "not a file")

    def test_needs_a_file(self) -> None:
        """status without its FILE argument is bad usage."""
        assert_usage_error(run("status"), "the following arguments are required: FILE")

    def test_a_host_database_is_refused_and_untouched(self, tmp_path: Path) -> None:
        """
        A SQLite file of the host's own (its tables, its user_version, no
        WAL): refused with one line, exit 1, and left byte for byte as it was.
        """
        path = tmp_path / "host.sqlite3"
        with closing(sqlite3.connect(path)) as conn:
            conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
            conn.execute("INSERT INTO users (name) VALUES ('alice')")
            conn.execute("PRAGMA user_version = 1")
            conn.commit()
        before = digest(path)

        result = run("status", str(path))

        assert (1, "") == (result.status, result.out)
        [line] = result.err.splitlines()
        assert line.startswith("prebuilds: error: "), line
        assert before == digest(path)
        assert [path] == list(tmp_path.iterdir())

    def test_a_newer_schema_is_refused_and_untouched(self, tmp_path: Path) -> None:
        """A file of a newer prebuilds: exit 1 naming the version, file unchanged."""
        path = tmp_path / "newer.sqlite3"
        SQLiteStore(path).close()
        with closing(sqlite3.connect(path)) as conn, conn:
            conn.execute("UPDATE prebuilds_schema SET version = 99")
        before = digest(path)

        result = run("status", str(path))

        assert (1, "") == (result.status, result.out)
        [line] = result.err.splitlines()
        assert line.startswith("prebuilds: error: "), line
        assert "99" in line
        assert before == digest(path)

    def test_a_file_that_is_not_sqlite_is_refused(self, tmp_path: Path) -> None:
        """A text file: exit 1, one line, the file untouched."""
        path = tmp_path / "notes.txt"
        path.write_text("not a database\n", encoding="utf-8")

        result = run("status", str(path))

        assert (1, "") == (result.status, result.out)
        assert 1 == len(result.err.splitlines())
        assert "not a database\n" == path.read_text(encoding="utf-8")


class TestErrors:
    """Every error is one line on stderr; --debug adds the traceback."""

    def test_unknown_command(self) -> None:
        """An unknown command: exit 2, the choices named."""
        assert_usage_error(run("nonsense"), "invalid choice: 'nonsense'")

    def test_unknown_option(self) -> None:
        """An unknown global option: exit 2."""
        assert_usage_error(run("--colour"), "unrecognized arguments: --colour")

    def test_the_error_names_the_program(self) -> None:
        """Errors name the program as it was run."""
        result = run("simulate", "--hours", "-5", prog="python -m prebuilds")

        assert_usage_error(result, "--hours", prog="python -m prebuilds")
        assert result.err.rstrip().endswith("(see python -m prebuilds --help)")

    def test_a_prebuilds_error_is_one_line(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A PrebuildsError from the command: exit 1, one line, no traceback."""

        def fail(*args: object, **kwargs: object) -> object:
            raise StoreError("database is locked\nfor a while")

        monkeypatch.setattr(_simulate, "simulate", fail)

        result = run("simulate", "--hours", "1")

        assert 1 == result.status
        assert "prebuilds: error: database is locked for a while\n" == result.err

    def test_debug_adds_the_traceback(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """--debug: the traceback, then the same one-line error."""

        def fail(*args: object, **kwargs: object) -> object:
            raise StoreError("database is locked")

        monkeypatch.setattr(_simulate, "simulate", fail)

        result = run("--debug", "simulate", "--hours", "1")

        assert 1 == result.status
        assert result.err.startswith("Traceback (most recent call last):")
        assert result.err.endswith("prebuilds: error: database is locked\n")

    def test_a_bug_is_one_line_that_offers_debug(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Any other exception is an internal error, still one line."""

        def fail(*args: object, **kwargs: object) -> object:
            raise RuntimeError("boom")

        monkeypatch.setattr(_simulate, "simulate", fail)

        result = run("simulate", "--hours", "1")

        assert 1 == result.status
        assert (
            "prebuilds: internal error: RuntimeError: boom "
            "(run with --debug for the traceback)\n"
        ) == result.err

    def test_a_bug_with_debug(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """--debug after the command works too, and shows the traceback."""

        def fail(*args: object, **kwargs: object) -> object:
            raise RuntimeError("boom")

        monkeypatch.setattr(_simulate, "simulate", fail)

        result = run("simulate", "--hours", "1", "--debug")

        assert result.err.startswith("Traceback (most recent call last):")
        assert result.err.endswith("prebuilds: internal error: RuntimeError: boom\n")

    def test_interrupted(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Ctrl-C: exit 130, one line, no traceback."""

        def interrupt(*args: object, **kwargs: object) -> object:
            raise KeyboardInterrupt

        monkeypatch.setattr(_simulate, "simulate", interrupt)

        result = run("simulate", "--hours", "1")

        assert (130, "prebuilds: interrupted\n") == (result.status, result.err)

    def test_a_closed_pipe_ends_quietly(self) -> None:
        """``prebuilds | head -1``: the reader goes away; no error, no traceback."""
        process = subprocess.Popen(
            [sys.executable, "-m", "prebuilds", "simulate", "--hours", "48"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert process.stdout is not None
        assert process.stderr is not None
        first = process.stdout.readline()
        process.stdout.close()
        err = process.stderr.read()
        process.stderr.close()
        status = process.wait()

        assert first.startswith(b"store: SQLite at ")
        assert (1, b"") == (status, err)


class TestHelpAndVersion:
    """--help, --version and the program's name."""

    def test_version(self, capsys: pytest.CaptureFixture[str]) -> None:
        """--version prints the package's version and exits 0."""
        result = run("--version")

        assert (0, f"prebuilds {prebuilds.__version__}\n") == (
            result.status,
            capsys.readouterr().out,
        )

    @pytest.mark.parametrize("argv", [[], ["simulate"], ["plan"], ["status"]])
    def test_help_is_plain_text(
        self, argv: list[str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Every --help: exit 0, plain text (no reST double backticks)."""
        result = run(*argv, "--help")

        out = capsys.readouterr().out
        assert 0 == result.status
        assert out.startswith(f"usage: prebuilds {' '.join(argv)}".rstrip())
        assert "``" not in out

    def test_help_lists_the_commands(self, capsys: pytest.CaptureFixture[str]) -> None:
        """The main help names every command, the examples and the exit statuses."""
        run("--help", prog="python -m prebuilds")

        out = capsys.readouterr().out
        for words in (
            "usage: python -m prebuilds",
            "simulate",
            "plan",
            "status",
            "python -m prebuilds status pools.sqlite3",
            "exit status: 0 success, 1 the command failed, 2 bad usage.",
        ):
            assert words in out

    def test_module_names_itself_python_m_prebuilds(self) -> None:
        """``python -m prebuilds``: help and errors say ``python -m prebuilds``."""
        usage = subprocess.run(
            [sys.executable, "-m", "prebuilds", "--help"],
            capture_output=True,
            text=True,
            check=True,
        )
        error = subprocess.run(
            [sys.executable, "-m", "prebuilds", "simulate", "--hours", "-5"],
            capture_output=True,
            text=True,
            check=False,
        )

        assert usage.stdout.startswith("usage: python -m prebuilds ")
        assert (2, "") == (error.returncode, error.stdout)
        assert error.stderr.startswith("python -m prebuilds: error: argument --hours")

    def test_console_script_is_main(self) -> None:
        """The ``prebuilds`` console script calls main, whose default name is ``prebuilds``."""
        [script] = entry_points(group="console_scripts", name="prebuilds")

        assert cli.main is script.load()
        assert "usage: prebuilds " in cli.build_parser("prebuilds").format_usage()


class TestSimulation:
    """The simulation behind ``simulate``, on any store."""

    def test_samples_every_hour(self) -> None:
        """One sample per simulated hour, passed to on_sample as it is taken."""
        seen: list[_simulate.Sample] = []

        result = _simulate.simulate(MemoryStore(), hours=3, on_sample=seen.append)

        assert seen == list(result.samples)
        assert [_simulate.START + timedelta(hours=h) for h in range(3)] == [
            s.at for s in seen
        ]
        assert 36 == result.passes

    def test_busy_hours_serve_claims_warm(self) -> None:
        """Over a day most claims are served from the pool."""
        result = _simulate.simulate(MemoryStore(), hours=24, seed=1)

        assert result.claims == result.warm + result.cold
        assert result.hit_rate > 0.5

    def test_no_claims_no_hit_rate(self) -> None:
        """Before any claim the hit rate is 0, not a division by zero."""
        result = _simulate.SimulationResult(
            claims=0, warm=0, cold=0, created=0, deleted=0, passes=0
        )

        assert 0.0 == result.hit_rate

    @pytest.mark.parametrize(
        ("kwargs", "field"),
        [({"hours": 0}, "hours"), ({"step": timedelta(0)}, "step")],
    )
    def test_refuses_bad_arguments(self, kwargs: dict[str, Any], field: str) -> None:
        """hours below 1 or a step that is not positive: InvalidInputError naming it."""
        with pytest.raises(InvalidInputError) as caught:
            _simulate.simulate(MemoryStore(), **kwargs)

        assert field == caught.value.field

    def test_starts_on_a_monday(self) -> None:
        """The simulated day is a Monday, so the scheduled pool is busy."""
        assert 0 == _simulate.START.weekday()
        assert isinstance(_simulate.START, datetime)
