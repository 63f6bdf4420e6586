"""The peers' measurement: blocks in a recorded order with cool-downs, the choice of peers, missing peers, the rows
of a target the peers cannot run on. The real runtimes are timed in test_deploy.py's compare tests."""

from __future__ import annotations

import json
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest

from tvm_nas.errors import TvmNasError
from tvm_nas.timing import Protocol, blocks, interleave, python_sampler

QUICK = Protocol(number=1, repeat=3, min_repeat_ms=0.1, rounds=2, max_rounds=3, tolerance=10.0)


def _log_sampler(name: str, log: list) -> callable:
    def sample():
        log.append((name, time.perf_counter()))
        return [1.0, 1.0, 1.0]
    return sample


@pytest.mark.parametrize("order, first, second", [
    ("forward", ["a", "b", "c"], ["a", "b", "c"]),
    ("reverse", ["c", "b", "a"], ["c", "b", "a"]),
    ("alternate", ["a", "b", "c"], ["c", "b", "a"]),
])
def test_blocks_run_in_the_order_asked_and_record_it(order, first, second):
    log: list = []
    samplers = {n: _log_sampler(n, log) for n in "abc"}
    timings, sequence = blocks(samplers, QUICK, order=order, cooldown_s=0.01)
    assert sequence == [first, second]  # stable after `rounds` rounds: nothing re-measured
    assert [n for n, _ in log][3:] == first + second  # after one warm-up block each
    gaps = [t1 - t0 for (_, t0), (_, t1) in zip(log, log[1:], strict=False)]
    assert min(gaps) >= 0.01  # a cool-down after every block
    assert list(timings) == ["a", "b", "c"] and all(t.median == 1.0 for t in timings.values())


def test_blocks_remeasure_only_the_unstable_runtime():
    values = iter([10.0, 10.0, 20.0, 10.0, 10.0])  # warm-up, then rounds 1-4
    samplers = {"steady": lambda: [1.0], "jumpy": lambda: [next(values)]}
    timings, sequence = blocks(samplers, Protocol(number=1, repeat=1, rounds=2, max_rounds=4, tolerance=0.05))
    assert sequence == [["steady", "jumpy"], ["steady", "jumpy"], ["jumpy"], ["jumpy"]]
    assert timings["jumpy"].stable and timings["jumpy"].discarded == 2 and timings["jumpy"].median == 10.0


def test_interleave_is_blocks_forward_without_cooldown():
    samplers = {n: python_sampler(lambda: None, QUICK)[0] for n in "xy"}
    assert list(interleave(samplers, QUICK)) == ["x", "y"]
    with pytest.raises(ValueError, match="order"):
        blocks(samplers, QUICK, order="sideways")


def test_peers_are_chosen_by_argument_or_environment(monkeypatch):
    from tvm_nas.deploy.peers import PEER_NAMES, selected_peers

    monkeypatch.delenv("TVM_NAS_PEERS", raising=False)
    assert selected_peers() == list(PEER_NAMES)
    monkeypatch.setenv("TVM_NAS_PEERS", "onnxruntime, pytorch")
    assert selected_peers() == ["pytorch", "onnxruntime"]  # always in the table's order
    assert selected_peers("executorch") == ["executorch"]
    with pytest.raises(TvmNasError, match="unknown peer.*tensorrt"):
        selected_peers("tensorrt")


def test_a_blocked_module_counts_as_not_installed(monkeypatch):
    from tvm_nas.deploy.peers import installed

    assert installed("onnxruntime")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # how Python marks a module that must not import
    assert not installed("onnxruntime")
    assert not installed("no_such_runtime_xyz")


class _Aarch64Target:
    """What compile's manifest writer reads of a `tvm.target.Target` (so that no TVM is imported here)."""

    kind = SimpleNamespace(name="llvm")
    attrs = {"mtriple": "aarch64-linux-gnu"}

    def __str__(self) -> str:
        return json.dumps({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "keys": ["arm_cpu", "cpu"]})


def test_a_board_lists_its_peers_as_not_run_never_with_host_figures(tmp_path):
    """An RPC board's row keeps its own (manifest) figure; the peers would run on this host, so they are listed as
    not run there, with the reason, and no figure."""
    from rich.console import Console

    from tvm_nas.arch import arch_document, load_architecture, write_arch
    from tvm_nas.deploy import compare_table
    from tvm_nas.deploy.compare import Built, compare_built
    from tvm_nas.deploy.compile import TaskReport, _manifest
    from tvm_nas.deploy.peers import PEER_NAMES
    from tvm_nas.space import load_space
    from tvm_nas.specfile import data_dir
    from tvm_nas.targets import load_target
    from tvm_nas.timing import Timing

    build = tmp_path / "build"
    build.mkdir()
    ops = ["mbconv_k5_e3", "zero", "mbconv_k3_e3"]
    arch = load_architecture(write_arch(tmp_path / "a.arch.json", arch_document(load_space("tiny"), ops, None, None)))
    board = load_target(data_dir("targets") / "rpi4b.yaml")
    lib = build / "model.so"
    lib.write_bytes(b"\x7fELF stand-in")  # never loaded: the board's row keeps the manifest's figure
    timing = Timing(1000.0, 990.0, 1010.0, 1000.0, 8.0, 985.0, 15, 5, "rpc rpi4b", 3, True, [1000.0] * 3, 1.0, 0)
    tvm_target = _Aarch64Target()
    onnx = {"file": "model.onnx", "sha256": "0" * 64, "opset": 20, "max_abs_err": 3e-8}
    tasks = TaskReport(total=3, reused=["a#1"], tuned=[], untuned=["b#2", "c#3"])
    checked = {"status": "passed", "how": "on rpi4b over RPC", "max_abs_err": 2e-6}
    x, y = np.zeros((1, 3, 16, 16), np.float32), np.zeros((1, 10), np.float32)
    doc = _manifest(arch, board, tvm_target, None, 0, "torch", x, y, lib, onnx, tasks, None, 900.0, timing.to_json(),
                    "time_evaluator on rpi4b over RPC", checked, 3.0, "0.27.0", 0, False, tmp_path / "logs")
    doc["tuning"]["database"] = "logs/rpi4b"  # as if tuned for the board (its database is not needed here)
    (build / "manifest.json").write_text(json.dumps(doc))
    rows = compare_built([Built(arch, board, None, build)])
    by = {r["runtime"]: r for r in rows}
    assert list(by) == ["tvm", "tvm-untuned", *PEER_NAMES]
    assert by["tvm"]["measured_us"] == 1000.0 and by["tvm"]["check"] == "ok"
    assert "tuned" in by["tvm"]["setting"]
    for name in ("tvm-untuned", *PEER_NAMES):
        assert by[name]["measured_us"] is None and by[name]["vs_tvm"] is None
        assert by[name]["setting"].startswith("not run on rpi4b: an RPC device")
    console = Console(width=80, record=True, color_system=None)
    console.print(compare_table(rows))
    text = console.export_text()
    assert "not run on rpi4b" in text and max(len(line) for line in text.splitlines()) <= 80


def test_executorchs_native_chatter_is_dropped_and_everything_else_passed_on(capfd):
    """ExecuTorch's C++ runtime writes its CPU probing straight to file descriptor 2 (past Python's logging):
    those lines go, anything else written there, by C or Python, still reaches the user, and so does an error."""
    import os

    from tvm_nas.deploy.peers import _EXECUTORCH_CHATTER, _native_stderr_without

    with _native_stderr_without(_EXECUTORCH_CHATTER):
        os.write(2, b"[cpuinfo_utils.cpp:87] Failed to open midr file /sys/devices/soc0/image_version\n")
        os.write(2, b"[threadpool.cpp:66] Resetting threadpool to 1 threads.\n")
        os.write(2, b"E 12:00 xnnpack: a real failure\n")
        print("from python", file=sys.stderr)
    with pytest.raises(RuntimeError, match="boom"), _native_stderr_without(_EXECUTORCH_CHATTER):
        os.write(2, b"said before the error\n")
        raise RuntimeError("boom")
    err = capfd.readouterr().err
    # (pytest holds Python's sys.stderr itself, so that line may come first)
    assert sorted(err.splitlines()) == ["E 12:00 xnnpack: a real failure", "from python", "said before the error"]
