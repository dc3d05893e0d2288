"""
The command line: ``python -m prebuilds [simulate|plan|status]``.

``simulate`` (the default) runs a simulated day of a host's pools on the
embedded SQLite store; ``plan`` shows what the pure calculator decides for a
built-in snapshot; ``status`` prints the pools of an existing SQLite file.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import uuid

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TextIO

from prebuilds._calculate import calculate_actions, calculate_state
from prebuilds._model import (
    Backoff,
    GlobalSnapshot,
    PrebuildSchedule,
    Preset,
    RunningPrebuild,
)
from prebuilds._records import PREBUILDS_OWNER_ID


def _plan(out: TextIO) -> None:
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
    snapshot = GlobalSnapshot(presets=[preset], running=running)
    preset_snapshot = snapshot.filter_by_preset(preset.id, now=now)
    print(f"now:      {now.isoformat()}", file=out)
    print(f"preset:   {preset.name} (schedule 08-17 Berlin → 4, else 1)", file=out)
    print(f"running:  {[str(p.id)[-3:] for p in preset_snapshot.running]}", file=out)
    print(f"expired:  {[str(p.id)[-3:] for p in preset_snapshot.expired]}", file=out)
    print(f"state:    {calculate_state(preset_snapshot, now=now)}", file=out)
    for action in calculate_actions(
        preset_snapshot, now=now, backoff_interval=timedelta(minutes=1)
    ):
        print(f"action:   {action}", file=out)
    backoff = GlobalSnapshot(
        presets=[preset],
        backoffs=[Backoff(preset_id=preset.id, num_failed=3, last_build_at=now)],
    ).filter_by_preset(preset.id, now=now)
    print("with 3 recent failures:", file=out)
    for action in calculate_actions(
        backoff, now=now, backoff_interval=timedelta(minutes=1)
    ):
        print(f"action:   {action}", file=out)


def _simulate(db: str | None, hours: int, seed: int, out: TextIO) -> None:
    from prebuilds._simulate import simulate  # noqa: PLC0415
    from prebuilds.stores._sqlite import SQLiteStore  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(db) if db else Path(tmp) / "prebuilds.sqlite3"
        store = SQLiteStore(path)
        try:
            print(f"store: SQLite at {path}", file=out)
            result = simulate(store, hours=hours, seed=seed, out=out)
        finally:
            store.close()
    print(
        f"claims: {result.claims}, served warm: {result.warm} "
        f"({result.hit_rate:.0%}), cold builds: {result.cold}; "
        f"prebuilds created: {result.created}, deleted: {result.deleted}, "
        f"passes: {result.passes}",
        file=out,
    )


def _status(db: str, out: TextIO) -> None:
    from prebuilds.stores._sqlite import SQLiteStore  # noqa: PLC0415

    store = SQLiteStore(db)
    try:
        snapshot = store.snapshot(
            now=datetime.now(timezone.utc),
            backoff_lookback=timedelta(hours=1),
            hard_limit=3,
        )
        print(f"paused: {store.is_paused()}", file=out)
        for preset in snapshot.presets:
            pooled = store.list_instances(
                preset_id=preset.id, owner_id=PREBUILDS_OWNER_ID
            )
            print(
                f"{preset.name or preset.id}: active={preset.is_active} "
                f"status={preset.status.value} pooled={len(pooled)} "
                f"ready={sum(1 for i in pooled if i.ready)}",
                file=out,
            )
        for invalid in snapshot.invalid_presets:
            print(f"invalid preset {invalid.preset_id}: {invalid.reason}", file=out)
    finally:
        store.close()


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    """Run the command line; return the exit code."""
    out = out or sys.stdout
    parser = argparse.ArgumentParser(prog="python -m prebuilds", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    sim = commands.add_parser("simulate", help="a simulated day on SQLite (default)")
    sim.add_argument("--db", help="SQLite file to use (default: a temporary one)")
    sim.add_argument("--hours", type=int, default=24, help="simulated hours")
    sim.add_argument("--seed", type=int, default=0, help="random seed")
    commands.add_parser("plan", help="what the calculator decides for an example")
    status = commands.add_parser("status", help="the pools of a SQLite file")
    status.add_argument("db", help="SQLite file")
    args = parser.parse_args(argv)
    if args.command == "plan":
        _plan(out)
    elif args.command == "status":
        _status(args.db, out)
    else:
        _simulate(
            getattr(args, "db", None),
            getattr(args, "hours", 24),
            getattr(args, "seed", 0),
            out,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
