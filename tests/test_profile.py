"""Profiling for real: TVM lowering, MetaSchedule tuning, measurement locally and through RPC, resume, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from conftest import MICRO_SPACE, TVM_NAS, cli, quick_target, write_yaml

from tvm_nas.profile.model import LatencyModel as LatencyTable  # the table and what validate fitted to it
from tvm_nas.profile.profiler import profile
from tvm_nas.space import load_space


def _assert_complete(table: LatencyTable, space) -> None:
    keys = {k.key for k in space.unique_op_keys()}
    assert set(table.entries) == keys
    for e in table.entries.values():
        assert e["median"] > 0 and e["mean"] > 0 and e["count"] > 1 and e["source"] == "measured"


def test_untuned_tiny_table(tiny_table):
    space = load_space("tiny")
    table = LatencyTable.load(tiny_table, space=space, target_name="host")
    _assert_complete(table, space)
    d = json.loads(tiny_table.read_text())
    assert d["schema"] == 1 and d["units"] == "us" and d["batch_size"] == 1 and d["dtype"] == "float32"
    assert d["target"]["tvm"]["kind"] == "llvm" and d["tvm_version"].startswith("0.27")
    assert d["dedup"]["unique_tasks"] <= d["dedup"]["tasks"]
    # a block with 6x expansion costs more than the same block with 3x
    blk = space.blocks()[-1]
    assert table.latency(blk.key("mbconv_k3_e6")) > table.latency(blk.key("mbconv_k3_e3"))


def test_tuned_micro_table_and_resume(micro_space, tmp_path):
    space, quick = load_space(micro_space), str(quick_target(tmp_path))
    table = profile(space, quick, trials=8, logs_dir=tmp_path)
    _assert_complete(table, space)
    assert all(e["trials"] > 0 for e in table.entries.values())  # every task got trials
    db = tmp_path / "quick" / "database_tuning_record.json"
    n_records = len(db.read_text().splitlines())
    assert n_records >= 8
    before = {k: e["median"] for k, e in table.entries.items()}
    again = profile(space, quick, trials=8, logs_dir=tmp_path)
    assert {k: e["median"] for k, e in again.entries.items()} == before  # nothing re-measured
    assert len(db.read_text().splitlines()) == n_records  # nothing re-tuned


def test_time_budget_profile_resumed_keeps_its_curve(micro_space, tmp_path):
    """A table whose time budget is spent, resumed with an op to measure (fewer kernels than the first run): the
    budget is the space's, so nothing is tuned again and the budget curve is kept."""
    space, quick = load_space(micro_space), str(quick_target(tmp_path))
    table = profile(space, quick, time_budget="15s", logs_dir=tmp_path)
    _assert_complete(table, space)
    curve = table.meta["timing"]["tune_curve"]
    assert curve and all(len(p) == 4 for p in curve)  # [seconds, trials, expected µs, kernels measured]
    path = tmp_path / "quick" / "micro.latency.json"
    d = json.loads(path.read_text())
    d["entries"].pop(next(iter(d["entries"])))
    path.write_text(json.dumps(d))
    ledger = tmp_path / "quick" / "time_budget.json"  # the whole budget spent (a run may stop a little short)
    assert len(json.loads(ledger.read_text())) == 1
    ledger.write_text(json.dumps({k: {"spent_s": 15.0} for k in json.loads(ledger.read_text())}))
    again = profile(space, quick, time_budget="15s", logs_dir=tmp_path)
    _assert_complete(again, space)
    assert again.meta["timing"]["tune_curve"] == curve
    assert again.meta["timing"]["tune_trials"] == table.meta["timing"]["tune_trials"]  # nothing tuned
    # `tvm-nas run --time-budget` with the same value profiles with the same settings: the table is reused as it is
    # (with its default --trials the run would have measured it again under other settings)
    def measured():  # what was measured (the profile notes when it last looked at the table)
        d = json.loads(path.read_text())
        d.pop("updated")
        return d

    before = measured()
    r = cli("run", "--space", str(micro_space), "--target", quick, "--logs-dir", str(tmp_path), "--time-budget", "15s",
            "--out", str(tmp_path / "run"), "--stop-after", "profile", timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    out = " ".join(r.stdout.split())
    assert "other settings" not in out and "5 unique, 5 already measured" in out, out[-2000:]
    assert measured() == before
    run_cfg = json.loads((tmp_path / "run" / "run.json").read_text())["config"]
    assert run_cfg["time_budget"] == "15s" and run_cfg["trials"] is None


def test_profile_through_rpc(micro_space, rpc_target, tmp_path):
    space = load_space(micro_space)
    table = profile(space, rpc_target, trials=2, logs_dir=tmp_path)
    _assert_complete(table, space)
    assert all(e["measured_at"].startswith("rpc 127.0.0.1") for e in table.entries.values())
    records = (tmp_path / "loopback" / "database_tuning_record.json").read_text().splitlines()
    assert len(records) >= 2  # tuning candidates ran through MetaSchedule's RPC runner


def test_interrupted_profile_resumes(tmp_path):
    """Ctrl-C in the middle of measuring, then the same command: measured ops are kept, the rest filled in."""
    path = tmp_path / "host" / "tiny.latency.json"
    # a runner started in the background (`cmd &`) ignores SIGINT, and children inherit that: give Ctrl-C back
    proc = subprocess.Popen([str(TVM_NAS), "profile", "--space", "tiny", "--target", "host",
                             "--logs-dir", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 600
    while time.time() < deadline:
        if path.exists() and len(json.loads(path.read_text())["entries"]) >= 2:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 130, out
    partial = json.loads(path.read_text())["entries"]  # still valid JSON: written atomically
    assert 2 <= len(partial) < 10
    r = cli("profile", "--space", "tiny", "--target", "host", "--logs-dir", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert f"{len(partial)} already measured" in " ".join((r.stdout + r.stderr).split())
    full = json.loads(path.read_text())["entries"]
    assert len(full) == 10
    assert all(full[k]["median"] == v["median"] for k, v in partial.items())


# -- bad input: one line, exit status 2, nothing overwritten ------------------------------------------------------
def _bad_space(tmp_path, edit):
    d = json.loads(json.dumps(MICRO_SPACE))
    edit(d)
    return str(write_yaml(tmp_path / "bad.yaml", d))


@pytest.mark.parametrize("case,match", [
    ("unknown_op", "unknown operator"),
    ("malformed", "malformed YAML"),
    ("zero_channels", "stages.0.out"),
    ("even_kernel", "kernel must be odd"),
    ("unknown_tag", "unknown TVM tag"),
    ("tracker", "query_rpc_tracker"),
    ("name_escapes_logs", "not a valid name"),
    ("absolute_name", "not a valid name"),
    ("not_utf8", "not UTF-8"),
    ("huge_resolution", "input.resolution"),
    ("unknown_cpu", "not a CPU LLVM knows"),
])
def test_bad_input_cli(tmp_path, case, match):
    space, target = "tiny", "host"
    if case == "unknown_op":
        space = _bad_space(tmp_path, lambda d: d["candidates"].append("sepconv_k3"))
    elif case == "malformed":
        (tmp_path / "m.yaml").write_text("name: [unclosed\n")
        space = str(tmp_path / "m.yaml")
    elif case == "zero_channels":
        space = _bad_space(tmp_path, lambda d: d["stages"][0].update(out=0))
    elif case == "even_kernel":
        space = _bad_space(tmp_path, lambda d: d["candidates"].append("mbconv_k4_e3"))
    elif case == "unknown_tag":
        target = str(write_yaml(tmp_path / "t.yaml", {"name": "t", "tvm": {"tag": "acme/toaster"}}))
    elif case == "tracker":
        target = str(write_yaml(tmp_path / "t.yaml", {
            "name": "t", "tvm": {"kind": "llvm"},
            "runner": {"kind": "rpc", "tracker_host": "127.0.0.1", "tracker_port": 1, "key": "k"}}))
    elif case == "name_escapes_logs":
        space = _bad_space(tmp_path, lambda d: d.update(name="../../escaped"))
    elif case == "absolute_name":
        target = str(write_yaml(tmp_path / "t.yaml", {"name": str(tmp_path / "abs"), "tvm": {"kind": "llvm"}}))
    elif case == "not_utf8":
        (tmp_path / "latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
        space = str(tmp_path / "latin1.yaml")
    elif case == "huge_resolution":
        space = _bad_space(tmp_path, lambda d: d["input"].update(resolution=1_000_000_000))
    elif case == "unknown_cpu":
        target = str(write_yaml(tmp_path / "t.yaml", {"name": "t", "tvm": {"kind": "llvm", "mcpu": "notacpu"}}))
    r = cli("profile", "--space", space, "--target", target, "--logs-dir", str(tmp_path / "logs"))
    assert r.returncode == 2, r.stdout + r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and match in lines[0], r.stderr
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix == ".json"]
    assert written == [], written  # nothing written, inside --logs-dir or outside it


@pytest.mark.parametrize("case,match", [("other_target", "field 'target'"), ("other_space", "field 'space'"),
                                        ("corrupt", "corrupted latency table"), ("no_std", "field 'std' missing"),
                                        ("infinite", "field 'median': inf"), ("tiny", "not a plausible latency"),
                                        ("invocation", "field 'invocation.median'")])
def test_bad_table_is_refused_and_kept(tiny_table, tmp_path, case, match):
    logs = tmp_path / "logs"
    space = "tiny"
    if case == "other_target":  # host's table placed where x86-64-v2's belongs
        dest = logs / "x86-64-v2" / "tiny.latency.json"
        target = "x86-64-v2"
    else:
        dest = logs / "host" / "tiny.latency.json"
        target = "host"
    dest.parent.mkdir(parents=True)
    data = tiny_table.read_bytes()
    if case == "other_space":
        d = json.loads(data)
        d["space"]["hash"] = "0" * 16
        data = json.dumps(d).encode()
    if case == "corrupt":
        data = data[: len(data) // 2]
    if case == "invocation":  # an empty call costing 3x the cheapest whole call: not this table's call cost
        d = json.loads(data)
        d["invocation"]["median"] = 3 * min(e["median"] for e in d["entries"].values())
        data = json.dumps(d).encode()
    if case in ("no_std", "infinite", "tiny"):
        d = json.loads(data)
        entry = d["entries"][sorted(d["entries"])[-1]]
        if case == "no_std":
            del entry["std"]
        else:
            entry["median"] = float("inf") if case == "infinite" else 1e-300
        data = json.dumps(d).encode()  # json writes inf as Infinity, as a damaged writer would
    dest.write_bytes(data)
    r = cli("profile", "--space", space, "--target", target, "--logs-dir", str(logs))
    assert r.returncode == 2 and match in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert dest.read_bytes() == data  # nothing overwritten
    assert os.listdir(dest.parent) == [dest.name] or all(not n.endswith(".tmp") for n in os.listdir(dest.parent))


def test_op_measured_under_the_empty_call_costs_nothing(tiny_table, tmp_path):
    # on a fast machine the classifier's whole call can time below the empty call's (CI did): the table loads,
    # and that op adds 0 to a net instead of a negative figure
    d = json.loads(tiny_table.read_text())
    cheapest = min(d["entries"], key=lambda k: d["entries"][k]["median"])
    d["invocation"]["median"] = 1.1 * d["entries"][cheapest]["median"]
    dest = tmp_path / "host" / "tiny.latency.json"
    dest.parent.mkdir()
    dest.write_text(json.dumps(d))
    table = LatencyTable.load(dest)
    assert table.invocation_us == d["invocation"]["median"]
    assert table.latency(cheapest, calibrated=False) == 0.0
    assert all(table.latency(k, calibrated=False) >= 0 for k in d["entries"])
