"""The peers' measurement: blocks in a recorded order with cool-downs, the choice of peers, missing peers, the rows
of a target the peers cannot run on. The real runtimes are timed in test_deploy.py's compare tests."""

from __future__ import annotations

import sys
import time

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


def test_a_board_lists_its_peers_as_not_run_never_with_host_figures(tmp_path):
    """An RPC board's row keeps its own (manifest) figure; the peers would run on this host, so they are listed as
    not run there, with the reason, and no figure."""
    import json

    from rich.console import Console

    from tvm_nas.arch import arch_document, load_architecture, write_arch
    from tvm_nas.deploy import compare_table
    from tvm_nas.deploy.compare import Built, compare_built
    from tvm_nas.deploy.peers import PEER_NAMES
    from tvm_nas.space import load_space
    from tvm_nas.specfile import data_dir
    from tvm_nas.targets import load_target

    build = tmp_path / "build"
    build.mkdir()
    (build / "manifest.json").write_text(json.dumps({
        "tvm_version": "0.27", "tuning": {"database": "logs/rpi4b"}, "predicted_latency_us": 900.0,
        "verification": {"status": "passed", "max_abs_err": 2e-6}, "measured_latency_us": 1000.0,
        "measurement": {"median": 1000.0, "q1": 990.0, "q3": 1010.0, "stable": True}}))
    ops = ["mbconv_k5_e3", "zero", "mbconv_k3_e3"]
    arch = load_architecture(write_arch(tmp_path / "a.arch.json", arch_document(load_space("tiny"), ops, None, None)))
    rows = compare_built([Built(arch, load_target(data_dir("targets") / "rpi4b.yaml"), None, build)])
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
