"""Budgeted tuning and the target's database: whole rounds by latency share, damaged files, one writer at a time."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pytest
from conftest import MICRO_SPACE, ROOT, write_yaml

from tvm_nas.backend import database as dbfile
from tvm_nas.backend import tuning
from tvm_nas.backend.budget import Allocator, TimeLedger, round_size_for
from tvm_nas.console import parse_duration
from tvm_nas.errors import TvmNasError


# -- the allocator (no TVM) ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,seconds", [("90s", 90), ("20m", 1200), ("1h", 3600), ("1h30m", 5400), ("45", 45)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["1x", "h", "-5m", "0s", "1h 2m", "inf"])
def test_parse_duration_refuses(text):
    with pytest.raises(TvmNasError, match="--time-budget"):
        parse_duration(text)


def test_allocator_spends_whole_rounds_by_latency_share():
    # heavy: 100 us used 3x per net; light: 10 us used once; flat: stops improving at once
    alloc = Allocator({"heavy": 3.0, "light": 1.0, "flat": 1.0}, round_size=10, max_trials=155)
    latency = {"heavy": 100e-6, "light": 10e-6, "flat": 50e-6}
    rounds = {k: 0 for k in latency}
    while (k := alloc.next()) is not None:
        rounds[k] += 1
        if k != "flat":
            latency[k] *= 0.9  # every round buys 10%
        alloc.record(k, 10, latency[k], seconds=1.0)
    assert alloc.spent_trials == 150  # 15 whole rounds; the 5 trials left over are not a round
    assert all(r >= 1 for r in rounds.values())  # every task is measured once first
    assert rounds["flat"] == 1 + alloc.patience  # stopped once it stalled
    assert "no gain" in alloc.state["flat"].stopped
    assert rounds["heavy"] > 3 * rounds["light"]  # 30x the share gets most of the rounds


def test_allocator_time_budget_and_eta():
    alloc = Allocator({"a": 1.0, "b": 1.0}, round_size=4, time_budget_s=0.05)
    assert alloc.next() is not None
    alloc.record("a", 4, 1e-5, seconds=1.0)  # a round costs more than the budget left
    assert alloc.next() is None and alloc.exhausted() == "time budget spent"
    assert alloc.eta_s() == 0.0


def test_round_size():
    assert round_size_for(1500, 32) == 46  # one whole round per task first
    assert round_size_for(10_000, 32) == 64
    assert round_size_for(8, 10) == 1
    assert round_size_for(None, 93) == 32


def test_time_ledger_carries_spent_time_across_runs(tmp_path):
    first = TimeLedger(tmp_path, ["b", "a"])
    assert first.base == 0 and first.left(60) == 60
    first.base = 45.0  # as if 45 s had been spent when the run was killed
    first.save()
    again = TimeLedger(tmp_path, ["a", "b"])  # same kernels, any order
    assert 45 <= again.base < 46 and again.left(60) < 15.1 and again.left(30) == 0
    assert TimeLedger(tmp_path, ["a", "c"]).base == 0  # other kernels: their own budget
    (tmp_path / TimeLedger.FILE).write_text("{half")  # damaged: start again, never refuse to tune
    assert TimeLedger(tmp_path, ["a", "b"]).base == 0


# -- a real database ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """Three kernels of the micro space, tuned for real with one candidate each."""
    from tvm_nas.backend.target import to_tvm_target
    from tvm_nas.backend.tuner import tune_budgeted
    from tvm_nas.profile.profiler import lower_op
    from tvm_nas.space import load_space
    from tvm_nas.targets import load_target

    root = tmp_path_factory.mktemp("tuned")
    space = load_space(write_yaml(root / "micro.yaml", MICRO_SPACE))
    spec = load_target("host")
    tgt = to_tvm_target(spec)
    by_op = {k.key: tuning.extract_tasks(lower_op(k, tgt, prepack=True), tgt) for k in space.unique_op_keys()[:2]}
    tasks = dict(list(tuning.dedup(by_op).items())[:3])
    events = []
    out = tune_budgeted(tasks, spec, root / "db", trials=3, on_round=events.append, say=lambda m: None)
    return root / "db", tasks, spec, out, events


def test_budgeted_tuning_for_real(tuned):
    work_dir, tasks, spec, out, events = tuned
    assert out.trials == 3 and out.rounds == 3 and len(events) == 3
    assert all(e.trials == 1 and e.best_us > 0 for e in events)
    db = tuning.open_database(work_dir, spec)
    assert all(tuning.records(db, t.mod) == 1 for t in tasks.values())
    assert out.expected_us_after > 0
    assert [c[1] for c in out.curve] == [1, 2, 3] and [c[3] for c in out.curve] == [1, 2, 3]  # the curve
    assert out.curve[-1][2] == pytest.approx(out.expected_us_after, rel=1e-3)


def _copy(tuned, tmp_path):
    work_dir, tasks, spec, _, _ = tuned
    dest = tmp_path / "host"
    shutil.copytree(work_dir, dest, ignore=shutil.ignore_patterns("logs", "*.lock*"))
    return dest, tasks, spec


def test_half_written_record_is_dropped_with_a_backup(tuned, tmp_path):
    work_dir, tasks, spec = _copy(tuned, tmp_path)
    rec = work_dir / dbfile.RECORDS
    lines = rec.read_text().splitlines()
    rec.write_text("\n".join(lines) + "\n" + lines[-1][: len(lines[-1]) // 2])  # a crash mid-write
    said = []
    db = tuning.open_database(work_dir, spec, say=said.append)
    assert sum(tuning.records(db, t.mod) for t in tasks.values()) == len(lines)  # every complete record kept
    assert len(said) == 1 and f"{dbfile.RECORDS}: line {len(lines) + 1}" in said[0]
    backups = list((work_dir / "damaged").glob(f"*/{dbfile.RECORDS}"))
    assert len(backups) == 1 and backups[0].read_text().endswith(lines[-1][: len(lines[-1]) // 2])
    assert tuning.open_database(work_dir, spec, say=said.append) and len(said) == 1  # repaired for good


def test_garbage_workload_line_renumbers_the_records(tuned, tmp_path):
    work_dir, tasks, spec = _copy(tuned, tmp_path)
    db = tuning.open_database(work_dir, spec)
    before = {k: tuning.records(db, t.mod) for k, t in tasks.items()}
    wl = work_dir / dbfile.WORKLOADS
    w_lines = wl.read_text().splitlines()
    records = [json.loads(r) for r in (work_dir / dbfile.RECORDS).read_text().splitlines()]
    first = min(r[0] for r in records)  # a workload that has records, with later workloads after it
    w_lines[first] = "#garbage" + w_lines[first][:40]
    wl.write_text("\n".join(w_lines) + "\n")
    said = []
    db = tuning.open_database(work_dir, spec, say=said.append)
    after = {k: tuning.records(db, t.mod) for k, t in tasks.items()}
    lost = [k for k in tasks if after[k] != before[k]]
    assert len(lost) == 1 and after[lost[0]] == 0  # only the dropped kernel's records are gone
    assert all(after[k] == before[k] for k in tasks if k not in lost)  # the others still point at their kernels
    assert f"{dbfile.WORKLOADS}: line {first + 1}" in said[0] and "was dropped" in said[0]


def test_valid_json_that_tvm_cannot_read_is_dropped(tuned, tmp_path):
    work_dir, tasks, spec = _copy(tuned, tmp_path)
    rec = work_dir / dbfile.RECORDS
    rec.write_text(rec.read_text() + '[0, [["not a trace"], [1.0], null, null]]\n')
    said = []
    db = tuning.open_database(work_dir, spec, say=said.append)
    assert sum(tuning.records(db, t.mod) for t in tasks.values()) == 3
    assert "TVM cannot read it" in said[0]


def test_second_writer_exits_naming_the_holder(tuned, tmp_path):
    work_dir, tasks, spec = _copy(tuned, tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from tvm_nas.backend import database
        with database.writer({str(work_dir)!r}):
            print("held", flush=True)
            time.sleep(120)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        from tvm_nas.backend.tuner import tune_budgeted

        said = []
        with pytest.raises(TvmNasError, match=f"still being written by pid {holder.pid}"):
            tune_budgeted(tasks, spec, work_dir, trials=3, say=said.append, lock_wait_s=1)
        assert said == [f"tuning database {work_dir} is being written by pid {holder.pid} (-c); waiting up to 1 s"]
        with pytest.raises(TvmNasError, match=f"being written by pid {holder.pid}"):
            with dbfile.writer(work_dir):
                pass
    finally:
        holder.kill()
        holder.wait()
    with dbfile.writer(work_dir):  # a killed holder leaves no stale lock
        pass


def test_rerun_warm_starts_the_shared_cost_model_from_the_database(tuned, tmp_path):
    from tvm_nas.backend.tuner import tune_budgeted

    work_dir, tasks, spec = _copy(tuned, tmp_path)
    said = []
    out = tune_budgeted(tasks, spec, work_dir, trials=1, say=said.append)
    assert any("cost model warm-started from 3 records" in m for m in said), said
    assert out.trials == 1 and out.rounds == 1  # a whole round of the size the budget allows, nothing more
    db = tuning.open_database(work_dir, spec)
    assert sum(tuning.records(db, t.mod) for t in tasks.values()) == 4  # nothing thrown away


def test_tuning_over_a_damaged_database_repairs_it_in_place(tuned, tmp_path):
    """The tuner holds the writer lock: it must repair the files themselves, not tune into a private copy."""
    from tvm_nas.backend.tuner import tune_budgeted

    work_dir, tasks, spec = _copy(tuned, tmp_path)
    rec = work_dir / dbfile.RECORDS
    rec.write_text(rec.read_text() + '[0, [["half')
    said = []
    tune_budgeted(tasks, spec, work_dir, trials=1, say=said.append)
    assert any("damaged line(s) dropped" in m for m in said), said
    assert len(rec.read_text().splitlines()) == 4 and rec.read_text().endswith("\n")


@pytest.mark.parametrize("content", ["{half", "[1, 2]", ""])
def test_damaged_target_stamp_is_named(tuned, tmp_path, content):
    work_dir, _, spec = _copy(tuned, tmp_path)
    (work_dir / "target.json").write_text(content)
    with pytest.raises(TvmNasError, match=r"target\.json: damaged .* delete .*target\.json"):
        tuning.open_database(work_dir, spec)


def test_database_without_stamp_is_used_not_ignored(tuned, tmp_path):
    """Records copied or merged by hand (no target.json) must not make compile fall back to default schedules."""
    work_dir, tasks, spec = _copy(tuned, tmp_path)
    (work_dir / "target.json").unlink()
    said = []
    db = tuning.open_database(work_dir, spec, create=False, say=said.append)
    assert db is not None and all(tuning.records(db, t.mod) == 1 for t in tasks.values())
    assert "without target.json" in said[0] and (work_dir / "target.json").is_file()
    assert tuning.open_database(tmp_path / "empty", spec, create=False) is None  # no records: no database


def test_time_budget_resumes_with_what_is_left(tuned, tmp_path):
    """A --time-budget is the total for the kernels: a rerun after a kill tunes only for the time left."""
    from tvm_nas.backend.tuner import tune_budgeted

    work_dir, tasks, spec = _copy(tuned, tmp_path)
    ledger = TimeLedger(work_dir, tasks)
    ledger.base = 3600.0 - 0.5  # an earlier run spent all but half a second of an hour, then died
    ledger.save()
    said = []
    out = tune_budgeted(tasks, spec, work_dir, time_budget_s=3600, say=said.append)
    assert out.rounds <= 1 and any("already spent" in m and "left" in m for m in said), said
    said.clear()
    out = tune_budgeted(tasks, spec, work_dir, time_budget_s=3600, say=said.append)
    assert out.rounds == 0 and out.why_ended == "time budget already spent"
    assert json.loads((work_dir / TimeLedger.FILE).read_text())[ledger.key]["spent_s"] >= 3600 - 0.5


def test_records_tuned_elsewhere_merge_into_the_targets_database(tuned, tmp_path):
    """The many-build-hosts recipe: a share tuned in another folder is exported as JSON pairs and merged."""
    work_dir, tasks, spec = _copy(tuned, tmp_path)
    pairs = tuning.export_records(work_dir)
    assert len(pairs) == 3 and all(isinstance(w, str) and isinstance(r, str) for w, r in pairs)
    home = tmp_path / "home"
    assert tuning.merge_records(home, spec, pairs, say=lambda m: None) == 3
    db = tuning.open_database(home, spec)
    assert all(tuning.records(db, t.mod) == 1 for t in tasks.values())
    assert tuning.best_run_s(db, next(iter(tasks.values())).mod) > 0
    with pytest.raises(TvmNasError, match="record 1 of 1: TVM cannot read it"):
        tuning.merge_records(home, spec, [(pairs[0][0], '[["not a trace"]]')], say=lambda m: None)
