"""
The command line: ``prebuilds [simulate|plan|status]``, also run as
``python -m prebuilds``.

``simulate`` (the default) runs a simulated day of a host's pools on the
embedded SQLite store; ``plan`` shows what the pure calculator decides for a
built-in snapshot; ``status`` prints the pools of an existing SQLite file,
which it opens read-only.

Exit status: 0 on success, 1 when the command failed (a file that is not a
prebuilds database, a store error), 2 for bad usage. Every error is one line
on stderr; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
import uuid

from datetime import datetime, timedelta, timezone
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

import attrs

from prebuilds._calculate import calculate_actions, calculate_state
from prebuilds._clock import SystemClock
from prebuilds._model import (
    Backoff,
    GlobalSnapshot,
    PrebuildSchedule,
    Preset,
    ReconciliationActions,
    RunningPrebuild,
)
from prebuilds._status import PoolStatus, statuses_from_facts
from prebuilds._version import __version__
from prebuilds.exceptions import PrebuildsError


if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from prebuilds._simulate import Sample, SimulationResult
    from prebuilds.interfaces import Clock

#: The longest simulation the command line runs: 30 days.
MAX_HOURS = 720

DESCRIPTION = """\
Keep pools of prebuilt, warm instances ready to hand out.
Without a command, simulate a day of two pools.
"""

EPILOG = """\
examples:
  {prog}                      simulate a day (a temporary database)
  {prog} simulate --hours 2 --json
  {prog} plan
  {prog} status pools.sqlite3
  {prog} status pools.sqlite3 --watch 5

exit status: 0 success, 1 the command failed, 2 bad usage.
"""


class UsageError(Exception):
    """Bad usage of the command line: exit status 2."""


class _Exit(Exception):  # noqa: N818 - a control-flow signal, not an error
    """argparse finished early (``--help``, ``--version``)."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            sys.stderr.write(message)
        raise _Exit(status)


def _integer(text: str, low: int, high: int | None) -> int:
    """*text* as an int from *low* to *high*, or the reason it is not one."""
    try:
        value = int(text)
    except ValueError:
        msg = f"must be an integer, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if value < low or (high is not None and value > high):
        limits = f"from {low} to {high}" if high is not None else f"{low} or more"
        msg = f"must be {limits}, got {value}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _hours(text: str) -> int:
    return _integer(text, 1, MAX_HOURS)


def _seed(text: str) -> int:
    return _integer(text, 0, None)


def _interval(text: str) -> float:
    """*text* as seconds from 0.1 to a day, or the reason it is not."""
    try:
        value = float(text)
    except ValueError:
        msg = f"must be a number of seconds, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if not 0.1 <= value <= 86_400:  # noqa: PLR2004 - the documented bounds
        msg = f"must be from 0.1 to 86400 seconds, got {text}"
        raise argparse.ArgumentTypeError(msg)
    return value


def build_parser(prog: str) -> argparse.ArgumentParser:
    """The argument parser, naming itself *prog* in help and errors."""
    parser = _Parser(
        prog=prog,
        description=DESCRIPTION,
        epilog=EPILOG.format(prog=prog),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version", action="version", version=f"prebuilds {__version__}"
    )
    # --json and --debug go before or after the command: the sub-commands'
    # copies default to SUPPRESS, so they keep a value given before them.
    for options in (parser, common := _Parser(add_help=False)):
        default = False if options is parser else argparse.SUPPRESS
        options.add_argument(
            "--json",
            action="store_true",
            default=default,
            help="print one JSON document instead of text",
        )
        options.add_argument(
            "--debug",
            action="store_true",
            default=default,
            help="show the traceback of an error",
        )
    parser.set_defaults(command="simulate", db=None, hours=24, seed=0, watch=None)
    commands = parser.add_subparsers(
        dest="command", title="commands", metavar="COMMAND"
    )
    sim = commands.add_parser(
        "simulate",
        parents=[common],
        help="a simulated day on SQLite (default)",
        description="Simulate a host's day: two pools (one scheduled in "
        "Europe/Berlin, one fixed) on a SQLite store, with users claiming "
        "instances. Prints one line per simulated hour, then totals.",
    )
    sim.add_argument(
        "--db",
        metavar="FILE",
        help="keep the simulated store in FILE, which must not exist yet "
        "(default: a temporary file, removed at the end)",
    )
    sim.add_argument(
        "--hours",
        type=_hours,
        default=24,
        help=f"simulated hours, 1 to {MAX_HOURS} (default: 24)",
    )
    sim.add_argument(
        "--seed",
        type=_seed,
        default=0,
        help="seed of the users' arrivals and failed builds (default: 0)",
    )
    commands.add_parser(
        "plan",
        parents=[common],
        help="what the calculator decides for an example",
        description="Show what the pure calculator decides for a built-in "
        "snapshot of one pool: its state and its actions, then the same "
        "pool backing off after three failed builds.",
    )
    status = commands.add_parser(
        "status",
        parents=[common],
        help="why each pool of a prebuilds SQLite file is (not) full (read-only)",
        description="Print one row per preset of a prebuilds SQLite file: "
        "desired, running, ready, starting and failed instances, and the "
        "reason the pool is or is not full (as StoreReconciler.status() "
        "says, with the reconciler's default settings). A rich table when "
        "rich is installed (the 'cli' extra), plain text otherwise. The "
        "file is opened read-only: nothing is created, migrated or written.",
    )
    status.add_argument("db", metavar="FILE", help="a prebuilds SQLite file")
    status.add_argument(
        "--watch",
        metavar="SECONDS",
        type=_interval,
        default=None,
        help="redraw every SECONDS (0.1 to 86400) until interrupted; with "
        "--json, one document per line",
    )
    return parser


# -- plan ---------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    """
    *value* as JSON data: attrs classes and dicts become objects, tuples and
    lists arrays, UUIDs, paths and datetimes strings, enums their value and
    timedeltas seconds.
    """
    if attrs.has(type(value)):
        value = {f.name: getattr(value, f.name) for f in attrs.fields(type(value))}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    converters: list[tuple[type | tuple[type, ...], Any]] = [
        (Enum, lambda v: v.value),
        ((uuid.UUID, Path), str),
        (datetime, datetime.isoformat),
        (timedelta, timedelta.total_seconds),
    ]
    for kind, convert in converters:
        if isinstance(value, kind):
            return convert(value)
    return value


def _dump(document: dict[str, Any], out: TextIO) -> None:
    json.dump(_jsonable(document), out, indent=2)
    out.write("\n")


def _example() -> tuple[datetime, Preset, GlobalSnapshot]:
    now = datetime(2025, 6, 2, 9, 30, tzinfo=timezone.utc)
    preset = Preset(
        id=uuid.UUID(int=1),
        template_id=uuid.UUID(int=2),
        template_version_id=uuid.UUID(int=3),
        desired_instances=1,
        name="small",
        ttl=timedelta(hours=6),
        scheduling_timezone="Europe/Berlin",
        schedules=(PrebuildSchedule(cron="* 8-17 * * 1-5", instances=4),),
    )
    running = [
        RunningPrebuild(
            id=uuid.UUID(int=100 + i),
            preset_id=preset.id,
            created_at=now - timedelta(hours=h),
            ready=True,
        )
        for i, h in enumerate((7, 2, 1))
    ]
    return now, preset, GlobalSnapshot(presets=[preset], running=running)


def _action_text(action: ReconciliationActions) -> str:
    kind = action.action_type.value
    if action.delete_ids:
        return f"{kind} {', '.join(str(i) for i in action.delete_ids)}"
    if action.backoff_until is not None:
        return f"{kind} until {action.backoff_until.isoformat()}"
    return f"{kind} {action.create}"


def _plan(out: TextIO, *, as_json: bool) -> None:
    now, preset, snapshot = _example()
    pool = snapshot.filter_by_preset(preset.id, now=now)
    state = calculate_state(pool, now=now)
    backoff_interval = timedelta(minutes=1)
    actions = calculate_actions(pool, now=now, backoff_interval=backoff_interval)
    failing = GlobalSnapshot(
        presets=[preset],
        backoffs=[Backoff(preset_id=preset.id, num_failed=3, last_build_at=now)],
    ).filter_by_preset(preset.id, now=now)
    backing_off = calculate_actions(failing, now=now, backoff_interval=backoff_interval)
    if as_json:
        document = {
            "now": now,
            "preset": {
                "id": preset.id,
                "name": preset.name,
                "desired_instances": preset.desired_instances,
                "ttl": preset.ttl,
                "scheduling_timezone": preset.scheduling_timezone,
                "schedules": [
                    {"cron": s.cron, "instances": s.instances} for s in preset.schedules
                ],
            },
            "running": [p.id for p in pool.running],
            "expired": [p.id for p in pool.expired],
            "state": state,
            "actions": actions,
            "after_3_failures": {"actions": backing_off},
        }
        _dump(document, out)
        return
    print(f"now:       {now.isoformat()}", file=out)
    print(
        f"preset:    {preset.name}: 4 instances 08-17 Mon-Fri in "
        f"{preset.scheduling_timezone}, else {preset.desired_instances}; "
        f"ttl {preset.ttl}",
        file=out,
    )
    print(f"running:   {', '.join(str(p.id) for p in pool.running)}", file=out)
    print(f"expired:   {', '.join(str(p.id) for p in pool.expired)}", file=out)
    state_text = ", ".join(
        f"{field.name} {getattr(state, field.name)}"
        for field in attrs.fields(type(state))
    )
    print(f"state:     {state_text}", file=out)
    for action in actions:
        print(f"action:    {_action_text(action)}", file=out)
    print("after 3 failed builds:", file=out)
    for action in backing_off:
        print(f"action:    {_action_text(action)}", file=out)


# -- simulate -------------------------------------------------------------------


def _sample_line(sample: Sample) -> str:
    cells = "  ".join(
        f"{f'want {p.want} ready {p.ready} failed {p.failed}':<26}"
        for p in sample.pools
    )
    return f"{sample.at:%a %H:%M}   {cells}{sample.warm}/{sample.cold}"


def _simulate(
    db: str | None, hours: int, seed: int, out: TextIO, *, as_json: bool
) -> None:
    from prebuilds._simulate import simulate  # noqa: PLC0415
    from prebuilds.stores._sqlite import SQLiteStore  # noqa: PLC0415

    if db is not None:
        target = Path(db)
        if target.exists():
            msg = f"--db {db!r} exists; give a new file (simulate never writes into an existing one)"
            raise UsageError(msg)
        if not target.parent.is_dir():
            msg = f"--db {db!r}: no such directory {str(target.parent)!r}"
            raise UsageError(msg)
    header = [False]

    def show(sample: Sample) -> None:
        if not header[0]:
            names = "  ".join(f"{p.name:<26}" for p in sample.pools)
            print(f"{'time (UTC)':<12} {names}warm/cold", file=out)
            header[0] = True
        print(_sample_line(sample), file=out)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(db) if db is not None else Path(tmp) / "prebuilds.sqlite3"
        if not as_json:
            print(f"store: SQLite at {path}", file=out)
        with SQLiteStore(path) as store:
            result = simulate(
                store, hours=hours, seed=seed, on_sample=None if as_json else show
            )
    if as_json:
        _dump_simulation(result, db=db, hours=hours, seed=seed, out=out)
        return
    print(
        f"claims: {result.claims}, served warm: {result.warm} "
        f"({result.hit_rate:.0%}), cold builds: {result.cold}; "
        f"prebuilds created: {result.created}, deleted: {result.deleted}, "
        f"passes: {result.passes}",
        file=out,
    )


def _dump_simulation(
    result: SimulationResult, *, db: str | None, hours: int, seed: int, out: TextIO
) -> None:
    document = {
        "db": db,
        "hours": hours,
        "seed": seed,
        "claims": result.claims,
        "warm": result.warm,
        "cold": result.cold,
        "hit_rate": result.hit_rate,
        "created": result.created,
        "deleted": result.deleted,
        "passes": result.passes,
        "samples": result.samples,
    }
    _dump(document, out)


# -- status -----------------------------------------------------------------------


#: The reconciler settings ``status`` explains the pools with: the defaults
#: of :class:`~prebuilds.StoreReconciler`.
_STATUS_SETTINGS: dict[str, Any] = {
    "backoff_interval": timedelta(minutes=1),
    "backoff_lookback": timedelta(hours=1),
    "hard_limit": 3,
}

#: The table's columns: heading, and the PoolStatus field (or how to show it).
_COLUMNS: tuple[tuple[str, Callable[[PoolStatus], str]], ...] = (
    ("TEMPLATE", lambda s: s.template_name),
    ("PRESET", lambda s: s.preset_name or str(s.preset_id)),
    ("DESIRED", lambda s: str(s.desired)),
    ("RUNNING", lambda s: str(s.running)),
    ("READY", lambda s: str(s.eligible)),
    ("STARTING", lambda s: str(s.starting)),
    ("FAILED", lambda s: str(s.failed_kept)),
    ("REASON", lambda s: s.reason),
)


def _status(
    db: str,
    out: TextIO,
    *,
    as_json: bool,
    watch: float | None,
    sleep: Callable[[float], object],
    clock: Clock,
) -> None:
    from prebuilds.stores._sqlite import SQLiteStore  # noqa: PLC0415

    path = Path(db)
    if not path.exists():
        msg = f"no such file: {db!r}"
        raise UsageError(msg)
    if not path.is_file():
        msg = f"not a file: {db!r}"
        raise UsageError(msg)
    with SQLiteStore(path, read_only=True) as store:
        while True:
            now = clock.now().astimezone(timezone.utc)
            paused = store.is_paused()
            statuses = statuses_from_facts(
                store.read_pool(), now=now, paused=paused, **_STATUS_SETTINGS
            )
            if as_json:
                document = {
                    "db": db,
                    "at": now.isoformat(),
                    "paused": paused,
                    "presets": [s.to_dict() for s in statuses],
                }
                # Watching: one document per line (JSON Lines).
                json.dump(document, out, indent=None if watch else 2)
                out.write("\n")
            else:
                _status_text(db, now, paused, statuses, out, clear=watch is not None)
            out.flush()
            if watch is None:
                return
            try:
                sleep(watch)
            except KeyboardInterrupt:  # the way a watch ends: not an error
                return


def _status_text(
    db: str,
    now: datetime,
    paused: bool,
    statuses: Sequence[PoolStatus],
    out: TextIO,
    *,
    clear: bool,
) -> None:
    """A rich table when rich is installed, aligned plain text otherwise."""
    header = [
        f"database: {db}",
        f"at:       {now:%Y-%m-%d %H:%M:%S} UTC",
        f"paused:   {'yes' if paused else 'no'}",
    ]
    rows = [[show(s) for _, show in _COLUMNS] for s in statuses]
    if not _rich_table(header, rows, out, clear=clear):
        _plain_table(header, rows, out, clear=clear)


def _rich_table(
    header: list[str], rows: list[list[str]], out: TextIO, *, clear: bool
) -> bool:
    """Print with rich; False when rich is not installed."""
    try:
        from rich.console import Console  # noqa: PLC0415
        from rich.table import Table  # noqa: PLC0415
    except ImportError:
        return False
    console = Console(file=out, width=None if out.isatty() else 200)
    if clear and out.isatty():
        console.clear()
    for line in header:
        console.print(line, highlight=False, markup=False)
    if not rows:
        console.print("no presets")
        return True
    table = Table(*(heading for heading, _ in _COLUMNS))
    for row in rows:
        table.add_row(*row)
    console.print(table)
    return True


def _plain_table(
    header: list[str], rows: list[list[str]], out: TextIO, *, clear: bool
) -> None:
    """Columns aligned with spaces; the reason last, never padded."""
    if clear:
        # A terminal is redrawn; a file or pipe gets the rounds one after
        # the other, a blank line between.
        out.write("\x1b[2J\x1b[H" if out.isatty() else "\n")
    print("\n".join(header), file=out)
    if not rows:
        print("no presets", file=out)
        return
    table = [[heading for heading, _ in _COLUMNS], *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(_COLUMNS) - 1)]
    for row in table:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]), file=out)


# -- main -----------------------------------------------------------------------


def _run(
    args: argparse.Namespace,
    out: TextIO,
    sleep: Callable[[float], object],
    clock: Clock,
) -> None:
    if args.command == "plan":
        _plan(out, as_json=args.json)
    elif args.command == "status":
        _status(
            args.db,
            out,
            as_json=args.json,
            watch=args.watch,
            sleep=sleep,
            clock=clock,
        )
    else:
        _simulate(args.db, args.hours, args.seed, out, as_json=args.json)


def main(
    argv: Sequence[str] | None = None,
    *,
    prog: str = "prebuilds",
    out: TextIO | None = None,
    err: TextIO | None = None,
    sleep: Callable[[float], object] = time.sleep,
    clock: Clock | None = None,
) -> int:
    """
    Run the command line on *argv* (default: ``sys.argv[1:]``).

    *prog* is the name help and errors give the program (``prebuilds`` for
    the console script, ``python -m prebuilds`` for the module). Output goes
    to *out*, errors to *err* (default: standard output and error). *sleep*
    waits between the rounds of ``status --watch``, and *clock* is the time
    ``status`` explains the pools at (default: the system's); tests inject
    their own.

    Returns:
        The exit status: 0 success, 1 the command failed, 2 bad usage.
    """
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    parser = build_parser(prog)
    debug = False
    status = 0
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
        debug = args.debug
        _run(args, out, sleep, clock or SystemClock())
    except _Exit as e:
        status = e.status
    except UsageError as e:
        print(f"{prog}: error: {e} (see {prog} --help)", file=err)
        status = 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=err)
        status = 130
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly. Python would
        # report the pipe again when it flushes standard output at exit.
        if out is sys.stdout:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        status = 1
    except Exception as e:  # noqa: BLE001 - the command line's last resort
        if debug:
            traceback.print_exc(file=err)
        if isinstance(e, PrebuildsError):
            print(f"{prog}: error: {_one_line(e)}", file=err)
        else:
            hint = "" if debug else " (run with --debug for the traceback)"
            what = f"{type(e).__name__}: {_one_line(e)}"
            print(f"{prog}: internal error: {what}{hint}", file=err)
        status = 1
    return status


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


if __name__ == "__main__":
    sys.exit(main(prog="python -m prebuilds"))
