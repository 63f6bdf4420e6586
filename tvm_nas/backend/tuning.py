"""MetaSchedule: task extraction, deduplication across many modules, budgeted tuning, the per-target database."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import TvmNasError
from ..io import atomic_write_json, read_json
from ..records import TargetStamp, check, reason
from . import database as dbfile
from .target import to_tvm_target


@dataclass
class Task:
    """One unique tuning task (a fused kernel), with the ops that use it."""

    key: str
    name: str
    mod: object  # tvm.IRModule of the kernel
    extracted: object  # ms.ExtractedTask
    users: list[str] = field(default_factory=list)
    weight: int = 0
    uses: dict[str, int] = field(default_factory=dict)  # user -> calls of this kernel in it


def task_key(mod) -> str:
    import tvm_ffi

    return f"{tvm_ffi.structural_hash(mod) & 0xFFFFFFFFFFFFFFFF:016x}"


def extract_tasks(fused, target) -> list:
    from tvm.s_tir import meta_schedule as ms

    return list(ms.relax_integration.extract_tasks(fused, target))


def dedup(tasks_by_user: dict[str, list]) -> dict[str, Task]:
    """Merge the tasks of many modules: identical kernels (structurally equal) are tuned once."""
    import tvm_ffi

    unique: dict[str, Task] = {}
    for user, tasks in tasks_by_user.items():
        for t in tasks:
            mod = t.dispatched[0]
            key = task_key(mod)
            if key in unique and not tvm_ffi.structural_equal(unique[key].mod, mod):
                key = f"{key}-{len(unique)}"  # hash collision: keep both
            task = unique.setdefault(key, Task(key, t.task_name, mod, t))
            task.users.append(user)
            task.weight += int(t.weight)
            task.uses[user] = task.uses.get(user, 0) + int(t.weight)
    return unique


# -- the database: one per target, never shared, never thrown away ---------------------------------------------
def _say(msg: str) -> None:
    print(f"tvm-nas: {msg}", file=sys.stderr)


def open_database(work_dir: str | Path, spec, create: bool = True, say: Callable[[str], None] = _say,
                  writer_held: bool = False):
    """The target's MetaSchedule JSON database in `work_dir`, refusing one written for another target.

    Damaged lines (a crash mid-write, a garbage line) are dropped with a backup kept and a message through `say`;
    while another process holds the writer lock, the repair is made on a private copy and the files are left alone.
    A caller that holds the writer lock itself (`writer_held`) always gets the files, repaired in place.
    """
    from tvm.s_tir import meta_schedule as ms

    work_dir = Path(work_dir)
    stamp = work_dir / "target.json"
    mine = {"name": spec.name, "tvm": str(to_tvm_target(spec))}
    if stamp.is_file():
        try:  # records.TargetStamp: {"name": ..., "tvm": ...}, nothing else
            theirs = check(stamp, read_json(stamp, "target stamp"), TargetStamp)
        except TvmNasError as e:
            raise TvmNasError(f"{stamp}: damaged ({reason(e, stamp)}): it says which target the "
                              f"database beside it serves; if that is {spec.name!r}, delete {stamp} and it is "
                              "written again") from None
        if theirs.tvm != mine["tvm"]:
            raise TvmNasError(f"{stamp}: field 'tvm': this tuning database was written for target "
                              f"{theirs.name!r} ({theirs.tvm}), not {spec.name!r} "
                              f"({mine['tvm']}); a database serves one target only: use another --logs-dir "
                              f"or delete {work_dir}")
    elif not create and not (work_dir / dbfile.WORKLOADS).is_file():
        return None
    elif (work_dir / dbfile.WORKLOADS).is_file():  # records without a stamp (copied or merged by hand): adopt
        say(f"{work_dir}: a tuning database without target.json; it is taken to serve target {spec.name!r} and "
            "stamped so")
    work_dir.mkdir(parents=True, exist_ok=True)
    if not stamp.is_file():
        atomic_write_json(stamp, mine)
    for deep in (False, True):  # lines TVM cannot parse although they are JSON are looked for only on failure
        where = _healthy_copy(work_dir, say, deep, writer_held)
        try:
            return ms.database.JSONDatabase(str(where / dbfile.WORKLOADS), str(where / dbfile.RECORDS),
                                            module_equality="structural")
        except Exception as e:  # noqa: BLE001 - TVM raises RuntimeError/TVMError with a C++ trace
            error = e
    raise TvmNasError(f"{work_dir / dbfile.RECORDS}: TVM cannot read this tuning database "
                      f"({error.__class__.__name__}); move {work_dir} aside to start a new one")


def _healthy_copy(work_dir: Path, say, deep: bool = False, writer_held: bool = False) -> Path:
    """`work_dir` itself after any repair, or a repaired private copy while another process writes it."""
    import tempfile

    if not (work_dir / dbfile.WORKLOADS).is_file() and not (work_dir / dbfile.RECORDS).is_file():
        return work_dir
    _, _, damage = dbfile.scan(work_dir, tvm_check=deep)
    if not damage:
        return work_dir
    if writer_held:
        rep = dbfile.repair(work_dir, deep)
        if rep:
            say(rep.describe())
        return work_dir
    try:
        with dbfile.writer(work_dir):
            rep = dbfile.repair(work_dir, deep)
        if rep:
            say(rep.describe())
        return work_dir
    except TvmNasError:  # a writer is appending right now: its last line may be half-written, read around it
        good_w, good_r, _ = dbfile.scan(work_dir, tvm_check=deep)
        tmp = Path(tempfile.mkdtemp(prefix="tvm-nas-db-"))
        (tmp / dbfile.WORKLOADS).write_text("".join(ln + "\n" for ln in good_w))
        (tmp / dbfile.RECORDS).write_text("".join(ln + "\n" for ln in good_r))
        return tmp


def records(db, mod) -> int:
    """How many tuning records the database holds for this kernel."""
    if db is None or not db.has_workload(mod):
        return 0
    return len(db.get_top_k(db.commit_workload(mod), 1 << 20))


def best_run_s(db, mod) -> float | None:
    """The best measured run time (seconds) of this kernel in the database, or None."""
    if db is None or not db.has_workload(mod):
        return None
    top = db.get_top_k(db.commit_workload(mod), 1)
    if not top or not top[0].run_secs:
        return None
    secs = [float(v) for v in top[0].run_secs]
    return sum(secs) / len(secs)


# -- tuning ------------------------------------------------------------------------------------------------------
def default_jobs() -> int:
    """All the cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass
class Settings:
    """How tuning spends its time. The search strategy's per-round cost is measured in docs/tuning.md.

    Attributes:
        jobs: builder processes and search/cost-model threads (default: all cores).
        round_size: candidates per round (None: the trial budget over the tasks, capped at 64; 32 with a time
            budget only).
        population: evolutionary search population (None: 8 x round size, within 128..512).
        genetic_iters: evolution iterations per round.
        patience / min_gain: a task stops after `patience` rounds without a gain of `min_gain`.
    """

    jobs: int | None = None
    round_size: int | None = None
    population: int | None = None
    genetic_iters: int = 2
    patience: int = 2
    min_gain: float = 0.01


def _builder(spec, jobs: int):
    from tvm.s_tir import meta_schedule as ms

    from . import workers

    f_export = None
    if spec.cross_compiler:
        spec.check_cross_compiler()
        f_export = workers.cross_exporter(spec.cross_compiler)
    return ms.builder.LocalBuilder(f_build=workers.build_kernel, f_export=f_export, max_workers=jobs,
                                   timeout_sec=60)


def _runner(spec, say):
    """MetaSchedule's runner: in a local process, or one worker per free server registered under the key."""
    from tvm.s_tir import meta_schedule as ms

    from .target import set_runtime_threads

    # Tuning only ranks candidates: 3 samples of >= 25 ms each rank them as well as the table's protocol does, at
    # a fraction of its time (a round times 32 candidates; docs/tuning.md). The table is timed with the full one.
    ev = ms.runner.EvaluatorConfig(number=spec.evaluator.number, repeat=min(spec.evaluator.repeat, 3),
                                   min_repeat_ms=min(spec.evaluator.min_repeat_ms, 25), enable_cpu_cache_flush=False)
    if spec.is_rpc:
        from .remote import check_tracker, free_servers

        r = spec.runner
        check_tracker(spec)
        workers = max(1, free_servers(spec))
        say(f"tuning runner: {workers} worker(s), one per free server under key '{r.key}'")
        cfg = ms.runner.RPCConfig(tracker_host=r.tracker_host, tracker_port=r.tracker_port, tracker_key=r.key,
                                  session_timeout_sec=r.session_timeout_s)
        return ms.runner.RPCRunner(rpc_config=cfg, evaluator_config=ev, max_workers=workers)
    set_runtime_threads(spec)  # inherited by the runner's worker process
    return ms.runner.LocalRunner(evaluator_config=ev, timeout_sec=60)


def _quiet_logging() -> None:
    """MetaSchedule logs every step to stdout at the level of its logger: keep the console to warnings (the
    per-task logs in `<work_dir>/logs/` keep everything), and drop unnamed handlers, which its logging set-up
    cannot reconfigure when a process tunes a second time."""
    import logging

    log = logging.getLogger("tvm.s_tir.meta_schedule")
    for h in list(log.handlers):
        if h.get_name() is None:
            log.removeHandler(h)
    if log.level in (logging.NOTSET, logging.DEBUG, logging.INFO):
        log.setLevel(logging.WARNING)


# -- moving records between databases (many build hosts: docs/build_hosts.md) -----------------------------------
def export_records(work_dir: str | Path) -> list[tuple[str, str]]:
    """Every record of a database as (workload JSON, record JSON) pairs: plain JSON, nothing pickled, so a share
    tuned on another host can be shipped back over any channel."""
    work_dir = Path(work_dir)
    wl, rec, damage = dbfile.scan(work_dir)
    if damage:
        raise TvmNasError(f"{work_dir / dbfile.RECORDS}: damaged ({len(damage)} line(s)); open it once with "
                          "tvm-nas (any profile or compile on its target) to repair it, then export")
    out = []
    for line in rec:
        index, record = json.loads(line)
        out.append((wl[index], json.dumps(record)))
    return out


def merge_records(work_dir: str | Path, spec, pairs: list[tuple[str, str]], say: Callable[[str], None] = _say,
                  lock_wait_s: float = 600.0) -> int:
    """Add exported (workload, record) pairs to the target's database with MetaSchedule's own API, which numbers
    the workloads consistently (never concatenate the files: records point at workloads by line number). Holds the
    writer lock. Returns how many records were added."""
    from tvm.s_tir import meta_schedule as ms

    with dbfile.writer(work_dir, wait_s=lock_wait_s, say=say):
        db = open_database(work_dir, spec, say=say, writer_held=True)
        n = 0
        for w_json, r_json in pairs:
            try:
                mod = ms.database.Workload.from_json(json.loads(w_json)).mod
                wl = db.commit_workload(mod)
                db.commit_tuning_record(ms.database.TuningRecord.from_json(json.loads(r_json), wl))
            except Exception as e:  # noqa: BLE001 - TVM raises several error types for a bad record
                raise TvmNasError(f"record {n + 1} of {len(pairs)}: TVM cannot read it ({e.__class__.__name__}); "
                                  f"{n} record(s) were added to {work_dir} before it") from None
            n += 1
    return n
