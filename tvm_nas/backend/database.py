"""The target's MetaSchedule JSON database on disk: damaged lines dropped (a backup kept), one writer at a time.

MetaSchedule's JSON database is two line-oriented files: `database_workload.json` (one kernel per line) and
`database_tuning_record.json` (one record per line, `[workload line number, record]`). A crash or a full disk can
leave a half-written last line, which TVM refuses to load with a bare `RuntimeError`. Records point at workloads by
line number, so dropping a workload line shifts every later workload: the records are renumbered with it, and
records of a dropped workload are dropped too.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock, Timeout

from ..errors import TvmNasError
from ..io import atomic_write_text

WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"
LOCK = "database.lock"


@dataclass
class Repair:
    """What a repair dropped: (file, line number, why) for each damaged line, and where the backup went."""

    dropped: list[tuple[str, int, str]] = field(default_factory=list)
    backup: Path | None = None

    def __bool__(self) -> bool:
        return bool(self.dropped)

    def describe(self) -> str:
        by_file: dict[str, list[str]] = {}
        for f, n, why in self.dropped:
            by_file.setdefault(f, []).append(f"{n} ({why})")
        parts = [f"{f}: line {', '.join(v[:5])}{' ...' if len(v) > 5 else ''}" for f, v in by_file.items()]
        return (f"tuning database repaired, {len(self.dropped)} damaged line(s) dropped: {'; '.join(parts)}; "
                f"the damaged files are kept in {self.backup}")


def _check_workload(obj, tvm_check: bool) -> str:
    if not (isinstance(obj, list) and len(obj) == 2 and isinstance(obj[0], str) and isinstance(obj[1], str)):
        return "not a workload"
    if tvm_check:
        from tvm.s_tir import meta_schedule as ms

        try:
            ms.database.Workload.from_json(obj)
        except Exception as e:  # TVM raises RuntimeError/TVMError/ValueError for a bad module
            return f"TVM cannot read it: {e.__class__.__name__}"
    return ""


def _check_record(obj, n_workloads: int) -> str:
    if not (isinstance(obj, list) and len(obj) == 2 and isinstance(obj[0], int) and isinstance(obj[1], list)):
        return "not a tuning record"
    if not 0 <= obj[0] < n_workloads:
        return f"points at workload {obj[0]}, which is not in {WORKLOADS}"
    return ""


def _tvm_workloads(w_lines, kept_at) -> dict:
    from tvm.s_tir import meta_schedule as ms

    return {pos: ms.database.Workload.from_json(json.loads(w_lines[pos][1])) for pos in kept_at}


def _tvm_record(obj, workload) -> str:
    from tvm.s_tir import meta_schedule as ms

    try:
        ms.database.TuningRecord.from_json(obj[1], workload)
    except Exception as e:  # noqa: BLE001 - any TVM error means this line is unreadable
        return f"TVM cannot read it: {e.__class__.__name__}"
    return ""


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        return []
    return path.read_bytes().decode("utf-8", errors="replace").splitlines()


def scan(work_dir: str | os.PathLike, tvm_check: bool = False) -> tuple[list[str], list[str], Repair]:
    """The good workload and record lines (records renumbered) and what was dropped; files are not touched."""
    work_dir = Path(work_dir)
    repair = Repair()
    w_lines = [(i + 1, ln) for i, ln in enumerate(_lines(work_dir / WORKLOADS)) if ln.strip()]
    good_w: list[str] = []
    kept_at: dict[int, int] = {}  # a record's workload index (position among non-empty lines) -> new index
    for pos, (lineno, line) in enumerate(w_lines):
        try:
            why = _check_workload(json.loads(line), tvm_check)
        except json.JSONDecodeError:
            why = "not JSON (half-written?)"
        if why:
            repair.dropped.append((WORKLOADS, lineno, why))
        else:
            kept_at[pos] = len(good_w)
            good_w.append(line)
    good_r: list[str] = []
    workloads = _tvm_workloads(w_lines, kept_at) if tvm_check else {}
    for i, line in enumerate(_lines(work_dir / RECORDS)):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            why = _check_record(obj, len(w_lines))
        except json.JSONDecodeError:
            why = "not JSON (half-written?)"
        if not why and obj[0] not in kept_at:
            why = f"its workload ({WORKLOADS} line {w_lines[obj[0]][0]}) was dropped"
        if not why and tvm_check:
            why = _tvm_record(obj, workloads[obj[0]])
        if why:
            repair.dropped.append((RECORDS, i + 1, why))
            continue
        if kept_at[obj[0]] != obj[0]:
            obj[0] = kept_at[obj[0]]
            line = json.dumps(obj, separators=(",", ":"))
        good_r.append(line)
    return good_w, good_r, repair


def repair(work_dir: str | os.PathLike, deep: bool = False) -> Repair:
    """Drop damaged lines of the database in `work_dir` (call with the writer lock held); a backup is kept.

    With `deep`, every line is also parsed by TVM (slower; for lines that are JSON but not a valid record).
    """
    work_dir = Path(work_dir)
    good_w, good_r, rep = scan(work_dir, tvm_check=deep)
    if not rep:
        return rep
    backup = work_dir / "damaged" / time.strftime("%Y%m%d-%H%M%S")
    backup.mkdir(parents=True, exist_ok=True)
    for name in (WORKLOADS, RECORDS):
        if (work_dir / name).is_file():
            shutil.copy2(work_dir / name, backup / name)
    atomic_write_text(work_dir / WORKLOADS, "".join(ln + "\n" for ln in good_w))
    atomic_write_text(work_dir / RECORDS, "".join(ln + "\n" for ln in good_r))
    rep.backup = backup
    return rep


# -- one writer at a time ---------------------------------------------------------------------------------------
def holder(work_dir: str | os.PathLike) -> str:
    """Who holds the writer lock (pid and command, as written by the holder), or ''."""
    try:
        return (Path(work_dir) / (LOCK + ".owner")).read_text().strip()
    except OSError:
        return ""


@contextmanager
def writer(work_dir: str | os.PathLike, wait_s: float = 0.0, say=None):
    """Hold the target database's writer lock.

    MetaSchedule's JSON database numbers workloads per process, so two processes appending to one database can
    attach a record to the wrong kernel: one writer at a time. A second writer waits up to `wait_s` (saying so
    through `say`) and then fails with one line naming the holder's pid.
    """
    import sys

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(work_dir / LOCK))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        who = holder(work_dir) or "another process"
        if wait_s > 0:
            if say:
                say(f"tuning database {work_dir} is being written by {who}; waiting up to {wait_s:.0f} s")
            try:
                lock.acquire(timeout=wait_s)
            except Timeout:
                raise TvmNasError(f"{work_dir / RECORDS}: still being written by {who} after {wait_s:.0f} s; "
                                  "run again when it has finished") from None
        else:
            raise TvmNasError(f"{work_dir / RECORDS}: being written by {who}; one process tunes a target at a "
                              "time: wait for it to finish, or use another --logs-dir") from None
    owner = work_dir / (LOCK + ".owner")
    try:
        owner.write_text(f"pid {os.getpid()} ({' '.join(Path(a).name for a in sys.argv[:3])})\n")
        yield
    finally:
        owner.unlink(missing_ok=True)
        lock.release()
