"""Per-layer answers (``compare --per-layer``): the searched tiny net's fused kernels timed by TVM, grouped per op,
beside the table's entry and ONNX Runtime's (and OpenVINO's) own per-node profile; real runtimes throughout."""

from __future__ import annotations

import csv
import json

import pytest
from conftest import DEPLOY_OPS as OPS

from tvm_nas.cli import main as cli_main
from tvm_nas.deploy.perlayer import _place, assign


def test_kernels_join_ops_in_call_order():
    """A kernel joins the current op if it has the kernel's key and has not had it yet, else the next op that has
    it; two identical ops in a row each get their own kernels; a kernel no op has joins the op before it."""
    ops = [{"t", "s"}, {"e", "d", "p"}, {"e", "d", "p"}, {"h"}]
    got = assign(["t", "s", "e", "d", "p", "e", "x", "d", "p", "h"], ops)
    assert [j for j, _ in got] == [0, 0, 1, 1, 1, 2, 2, 2, 2, 3]
    assert [m for _, m in got] == [True] * 6 + [False] + [True] * 3
    assert assign(["?", "t"], ops) == [(0, False), (0, True)]


def test_peer_nodes_without_a_layer_join_their_neighbour():
    known = {"conv": "stem", "dw": "blocks.0", "mean": "classifier"}
    assert _place(["reorder_in", "conv", "dw", "reorder_out", "mean"], known) == \
        ["stem", "stem", "blocks.0", "blocks.0", "classifier"]


@pytest.mark.slow
def test_compare_per_layer_on_the_searched_net(host, tiny_host_logs, arch_file, tmp_path, capsys):  # noqa: F811
    from tvm_nas.deploy.peers import installed

    rc = cli_main(["compare", "--arch", str(arch_file), "--target", host, "--logs-dir", str(tiny_host_logs),
                   "--per-layer", "--json", str(tmp_path / "c.json"), "--csv", str(tmp_path / "c.csv")])
    assert rc == 0
    doc = json.loads((tmp_path / "c.json").read_text())
    [ans] = doc["per_layer"]
    rows = ans["rows"]
    # one row per op of the net (zero has no kernels), each with TVM's kernels, the table's entry and ONNX
    # Runtime's nodes
    expected = {"stem", "first_block", "head", "classifier",
                *(f"blocks.{i}" for i, op in enumerate(OPS) if op != "zero")}
    assert {r["layer"] for r in rows} == expected and len(rows) == len(expected)
    for r in rows:
        assert r["kernels"] and all(k["matched"] and k["measurement"]["median"] > 0 for k in r["kernels"]), r
        assert all(set(k["measurement"]) == {"median", "q1", "q3", "stable", "rounds"} for k in r["kernels"])
        assert r["tvm_us"] == pytest.approx(sum(k["measurement"]["median"] for k in r["kernels"]))
        assert r["predicted_us"] is not None and r["predicted_us"] >= 0
        assert r["onnxruntime_us"] is not None and r["onnxruntime_us"] >= 0 and r["peer_nodes"]["onnxruntime"]
        if installed("openvino"):
            assert r["openvino_us"] is not None
    blocks = [r for r in rows if r["layer"].startswith("blocks.")]
    assert all(len(r["kernels"]) == 3 for r in blocks)  # expand, depthwise, project (+ residual)
    assert ans["peer"] in ("onnxruntime", "openvino") and "ONNX Runtime" in ans["peers"]["onnxruntime"]
    # sorted by where TVM loses most against the fastest profiled peer
    losses = [r["loss_us"] for r in rows]
    assert all(v is not None for v in losses) and losses == sorted(losses, reverse=True)
    assert all(r["loss_us"] == pytest.approx(r["tvm_us"] - r[f"{ans['peer']}_us"]) for r in rows)
    # the kernels alone add up to about the whole net (it also pays the VM's dispatch; the machine is shared)
    net = next(r for r in doc["rows"] if r["runtime"] == "tvm")["measured_us"]
    assert ans["tvm_net_us"] == net
    # a unit slip (ns or ms for µs) is a factor of 1000; the kernels and the whole net are timed at different
    # moments, and on a machine busy with other jobs one of them measured 5x the other (a CI run beside training)
    assert 0.1 <= sum(r["tvm_us"] for r in rows) / net <= 10.0
    with open(tmp_path / "c.per_layer.csv") as f:
        flat = list(csv.DictReader(f))
    assert [r["layer"] for r in flat] == [r["layer"] for r in rows] and float(flat[0]["tvm_us"]) > 0
    out = capsys.readouterr().out
    assert "per layer: a on host" in out and "loss" in out and "ort" in out
    assert all(layer in out for layer in expected)


@pytest.mark.slow
def test_per_layer_says_to_compile_again_when_the_database_is_not_the_builds(host, tiny_host_logs, arch_file,
                                                                             tmp_path):
    """The shipped library's `main` is compiled, so per-layer records the kernel calls from a bytecode twin built
    with the database the manifest names. A twin built otherwise (here: that database gone, so default schedules
    and no pre-packed weights) does not call the library's kernels as they were built: one clear error, never
    figures of other kernels."""
    from tvm_nas.arch import load_architecture
    from tvm_nas.deploy.compile import compile_arch
    from tvm_nas.deploy.perlayer import per_layer
    from tvm_nas.errors import TvmNasError
    from tvm_nas.targets import load_target

    out = tmp_path / "build"
    manifest = compile_arch(arch_file, host, out=out, logs_dir=tiny_host_logs, measure=False, verify=False)
    assert manifest["tuning"]["database"]
    moved = {**manifest, "tuning": {**manifest["tuning"], "database": str(tmp_path / "gone")}}
    with pytest.raises(TvmNasError, match=r"model\.so: .*compile it again"):
        per_layer(load_architecture(arch_file), load_target(host), out, moved, peers=())
