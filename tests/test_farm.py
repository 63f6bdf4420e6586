"""A board farm on 127.0.0.1: a real tracker, three real RPC servers under one key, one killed mid-profile."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time

import pytest
from conftest import TVM_NAS, start_farm, stop_all, write_yaml


@pytest.fixture
def farm(tmp_path):
    """A tracker and three servers registered under key `farm`: (tracker port, {server port: process})."""
    port, servers, procs = start_farm("farm", 3, tmp_path)
    try:
        yield port, servers
    finally:
        stop_all(procs)


def _target(tmp_path, port, **evaluator):
    return write_yaml(tmp_path / "farm.yaml", {
        "name": "farm", "tvm": {"kind": "llvm", "mcpu": "auto"},
        "runner": {"kind": "rpc", "tracker_host": "127.0.0.1", "tracker_port": port, "key": "farm"},
        "threads": 1, "evaluator": evaluator or {"number": 1, "repeat": 4, "min_repeat_ms": 150}})


def test_tuning_runner_gets_one_worker_per_free_server(farm, tmp_path):
    from tvm_nas.backend.remote import free_servers, servers, summary
    from tvm_nas.targets import load_target

    port, _ = farm
    spec = load_target(_target(tmp_path, port))
    assert servers(summary(spec), "farm")[0] == 3
    assert free_servers(spec) == 3


def test_profile_survives_a_board_killed_mid_run(farm, tmp_path):
    port, servers = farm
    target = _target(tmp_path, port)
    logs = tmp_path / "logs"
    table = logs / "farm" / "tiny.latency.json"
    proc = subprocess.Popen([str(TVM_NAS), "profile", "--space", "tiny", "--target",
                             str(target), "--logs-dir", str(logs)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    victim = None
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if table.exists():
            entries = json.loads(table.read_text())["entries"]
            if len(entries) >= 3:
                used = {e["measured_at"].split()[1] for e in entries.values()}
                victim = next(iter(used)).split(":")[1]  # a board that has measured: it holds a session
                os.killpg(servers[int(victim)].pid, signal.SIGKILL)
                break
        time.sleep(0.2)
    out = proc.communicate(timeout=600)[0]
    assert victim is not None, out
    assert proc.returncode == 0, out
    entries = json.loads(table.read_text())["entries"]
    assert len(entries) == 10  # the table is complete
    boards = {e["measured_at"].split()[1] for e in entries.values()}
    assert len(boards) >= 2  # the ops were spread over the boards
    flat = " ".join(out.split())
    assert f"board 127.0.0.1:{victim} failed" in flat  # named as it happened, and at the end
    assert "board(s) that failed during the run: 127.0.0.1:" + victim in flat


def test_tracker_that_never_answers_times_out(tmp_path):
    """A port that accepts connections but never answers (not a tracker, or a hung one): one line in seconds."""
    from conftest import cli

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    held = []
    threading.Thread(target=lambda: [held.append(srv.accept()) for _ in range(8)], daemon=True).start()
    target = write_yaml(tmp_path / "hung.yaml", {
        "name": "hung", "tvm": {"kind": "llvm"},
        "runner": {"kind": "rpc", "tracker_host": "127.0.0.1", "tracker_port": srv.getsockname()[1], "key": "k"}})
    t0 = time.time()
    r = cli("profile", "--space", "tiny", "--target", str(target), "--logs-dir", str(tmp_path / "logs"), timeout=120)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "did not answer" in lines[0], r.stderr
    assert time.time() - t0 < 60
    srv.close()
