"""Deploy: arch -> ONNX + Relax -> database reuse -> compile, export, verify, measure; bad inputs; compare."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DEPLOY_OPS as OPS
from conftest import TVM_NAS

from tvm_nas.arch import load_architecture
from tvm_nas.cli import main as cli_main
from tvm_nas.deploy.compile import LIBRARY, MANIFEST, compile_arch, lower_network
from tvm_nas.deploy.model import build_network_from_arch, example_input, torch_forward
from tvm_nas.deploy.onnx import export_onnx, onnxruntime_forward
from tvm_nas.io import sha256_file
from tvm_nas.ops import ReLU6, prepare_for_deploy
from tvm_nas.space import load_space
from tvm_nas.specfile import data_dir


@pytest.fixture(scope="session")
def host_build(host, tiny_host_logs, arch_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("build") / "host"
    records = (tiny_host_logs / "host" / "database_tuning_record.json").read_text()
    manifest = compile_arch(arch_file, host, out=out, logs_dir=tiny_host_logs, trials=0)
    return out, manifest, records


def _record_lines(logs: Path, target: str = "host") -> list[str]:
    return (logs / target / "database_tuning_record.json").read_text().splitlines()


# -- network and ONNX ------------------------------------------------------------------------------------------
def test_network_is_folded_eval_and_seeded(arch_file):
    a = build_network_from_arch(arch_file, seed=3)
    b = build_network_from_arch(arch_file, seed=3)
    assert not a.training
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in a.modules())
    x = example_input((1, 3, 16, 16))
    np.testing.assert_array_equal(torch_forward(a, x), torch_forward(b, x))


def test_trained_weights_are_loaded(arch_file, tmp_path):
    from tvm_nas.network import Network

    space = load_space("tiny")
    torch.manual_seed(7)
    net = Network(space, OPS)
    torch.save(net.state_dict(), tmp_path / "w.pt")
    x = example_input((1, 3, 16, 16))
    expected = torch_forward(prepare_for_deploy(net), x)
    got = torch_forward(build_network_from_arch(arch_file, tmp_path / "w.pt"), x)
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_onnx_export_checks_and_matches_torch(arch_file, tmp_path):
    import onnx

    model = build_network_from_arch(arch_file)
    x = example_input((1, 3, 16, 16))
    info = export_onnx(model, x, tmp_path / "m.onnx")
    onnx.checker.check_model(onnx.load(str(tmp_path / "m.onnx")), full_check=True)
    assert info["max_abs_err"] <= 1e-4
    np.testing.assert_allclose(onnxruntime_forward(tmp_path / "m.onnx", x), torch_forward(model, x),
                               atol=1e-4)
    # the standard graph other runtimes fuse best: every ReLU6 one Clip, no Relu + Min pair
    from collections import Counter

    nodes = Counter(n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node)
    relu6 = sum(isinstance(m, ReLU6) for m in model.modules())
    assert nodes["Clip"] == relu6 > 0
    assert nodes["Min"] == nodes["Relu"] == nodes["Max"] == 0


def test_tvm_rewrites_clip_to_the_kernels_it_tunes(arch_file, tmp_path):
    """ReLU6 reaches TVM as clip (torch and ONNX alike); the import rewrites it to minimum(relu(x), 6), so the
    fused kernels, and with them the table's tuning records, are those of the element-wise form."""
    import tvm_ffi

    from tvm_nas.backend import pipeline
    from tvm_nas.backend.target import to_tvm_target
    from tvm_nas.targets import load_target

    model = build_network_from_arch(arch_file)
    x = example_input((1, 3, 16, 16))
    export_onnx(model, x, tmp_path / "m.onnx")
    target = to_tvm_target(load_target("host"))

    def kernels(mod):
        assert "relax.clip" not in mod.script()
        fused = pipeline.lower(mod, target, True)
        return sorted(tvm_ffi.structural_hash(f) for f in fused.functions.values() if "PrimFunc" in type(f).__name__)

    from_torch = kernels(pipeline.import_torch(model, (1, 3, 16, 16)))
    from_onnx = kernels(pipeline.import_onnx(tmp_path / "m.onnx"))

    class ElementwiseReLU6(torch.nn.Module):  # what the network wrote before ReLU6 was one Clip
        def forward(self, v):
            return torch.minimum(torch.relu(v), torch.tensor(6.0))

    for m in model.modules():
        for name, child in m.named_children():
            if isinstance(child, ReLU6):
                setattr(m, name, ElementwiseReLU6())
    assert from_torch == kernels(pipeline.import_torch(model, (1, 3, 16, 16)))
    assert from_onnx  # the ONNX route lowers with no clip left (its numerics: test_onnx_route_agrees_...)


# -- host: compile, load, numerics, database reuse -----------------------------------------------------------
@pytest.mark.slow
def test_host_compile_load_and_numerics(host_build, arch_file):
    from tvm_nas.backend.library import run_library

    out, m, _ = host_build
    lib = out / LIBRARY
    assert m["library"]["sha256"] == sha256_file(lib)
    assert m["input"] == {"name": "input", "shape": [1, 3, 16, 16], "dtype": "float32", "layout": "NCHW"}
    assert m["output"]["shape"] == [1, 10]
    assert m["verification"]["status"] == "passed" and m["verification"]["max_abs_err"] <= 1e-4
    assert m["measured_latency_us"] > 0 and m["measurement"]["count"] >= 2
    assert m["predicted_latency_us"] > 0 and m["measured_over_predicted"] > 0
    assert m["tvm_version"] and json.loads((out / MANIFEST).read_text()) == m
    x = example_input((1, 3, 16, 16), seed=11)
    model = build_network_from_arch(arch_file)
    np.testing.assert_allclose(run_library(lib, x), torch_forward(model, x), atol=1e-4)


def test_host_library_runs_a_compiled_main(host_build):
    """The shipped CPU module's `main` is machine code (no VM interpretation between kernels), and the VM that
    loads it has no instrument hook to call: what per-layer timing works around with a bytecode twin."""
    import tvm
    from tvm import relax

    from tvm_nas.backend.trust import open_library

    out, _, _ = host_build
    lib = open_library(out / LIBRARY)
    assert any(m.implements_function("__vmtir__main") for m in lib.imports)
    vm = relax.VirtualMachine(lib, tvm.cpu())
    seen = []
    vm.set_instrument(lambda func, name, before, ret, *args: seen.append(name) or 0)
    vm["main"](tvm.runtime.tensor(example_input((1, 3, 16, 16), seed=0), tvm.cpu()))
    assert seen == []


@pytest.mark.slow
def test_profiled_tasks_are_reused_not_retuned(host_build, tiny_host_logs):
    _, m, records_before = host_build
    assert m["tuning"]["reused"] >= 1, "the kernels tuned by the profile must be found in the database"
    assert m["tuning"]["tuned"] == 0
    assert m["tuning"]["reused"] + m["tuning"]["untuned"] == m["tuning"]["total"]
    assert (tiny_host_logs / "host" / "database_tuning_record.json").read_text() == records_before


@pytest.mark.slow
def test_only_missing_tasks_are_tuned(host, host_build, tiny_host_logs, arch_file, tmp_path):
    _, first, _ = host_build
    logs = tmp_path / "logs"
    shutil.copytree(tiny_host_logs, logs)
    before = _record_lines(logs)
    # a fresh process: MetaSchedule's logging setup fails on a second tuning run in one pytest process
    proc = subprocess.run([str(TVM_NAS), "compile", "--arch", str(arch_file),
                           "--target", host, "--out", str(tmp_path / "out"), "--logs-dir", str(logs),
                           "--trials", "1", "--no-measure"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    t = json.loads((tmp_path / "out" / MANIFEST).read_text())["tuning"]
    assert t["tasks"]["reused"] == first["tuning"]["tasks"]["reused"]
    assert t["tuned"] == 1 and not set(t["tasks"]["tuned"]) & set(t["tasks"]["reused"])
    after = _record_lines(logs)
    assert after[:len(before)] == before and len(after) > len(before)


@pytest.mark.slow
def test_time_budget_tunes_this_nets_own_kernels_once(host, host_build, tiny_host_logs, arch_file, tmp_path):
    """`compile --time-budget` tunes the net's kernels further (those with records too), appends to the database,
    keeps the time in the ledger under this net's kernels, and the same call again tunes nothing more."""
    _, first, _ = host_build
    logs = tmp_path / "logs"
    shutil.copytree(tiny_host_logs, logs)
    before = _record_lines(logs)
    argv = [str(TVM_NAS), "compile", "--arch", str(arch_file), "--target", host, "--out", str(tmp_path / "out"),
            "--logs-dir", str(logs), "--time-budget", "20s", "--no-measure"]
    # a fresh process: MetaSchedule's logging setup fails on a second tuning run in one pytest process
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    t = json.loads((tmp_path / "out" / MANIFEST).read_text())["tuning"]
    assert t["time_budget_s"] == 20.0 and 0 < t["tuning_seconds"] < 300  # a round started is finished
    # every round says what it tuned and how much of the budget is spent
    said = " ".join(proc.stderr.split())  # the console wraps long lines
    assert re.search(r"\[1/\d+\] \S+: round 1, \d+ trials, best .*; \d+s in, budget 20s", said), said[-2000:]
    assert t["tuned"] >= 1 and set(t["tasks"]["tuned"]) <= set(first["tuning"]["tasks"]["reused"]) | set(
        first["tuning"]["tasks"]["untuned"])
    assert t["reused"] + t["tuned"] + t["untuned"] == t["total"]
    after = _record_lines(logs)
    assert after[:len(before)] == before and len(after) > len(before)
    ledger = logs / "host" / "time_budget.json"  # this net's entry (the profile had a trial budget)
    spent = json.loads(ledger.read_text())
    assert len(spent) == 1 and 0 < next(iter(spent.values()))["spent_s"]
    ledger.write_text(json.dumps({k: {"spent_s": 20.0} for k in spent}))  # the whole budget (a run may stop short)

    again = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "already spent" in again.stderr
    t = json.loads((tmp_path / "out" / MANIFEST).read_text())["tuning"]
    assert t["tuned"] == 0 and "tuning_seconds" not in t
    assert _record_lines(logs) == after

    refused = subprocess.run(argv + ["--untuned"], capture_output=True, text=True, timeout=600)
    assert refused.returncode != 0 and "--time-budget" in refused.stderr and "Traceback" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_onnx_route_agrees_with_torch_export(host, host_build, arch_file, tiny_host_logs, tmp_path):
    from tvm_nas.backend.library import run_library

    out, _, _ = host_build
    m = compile_arch(arch_file, host, out=tmp_path, logs_dir=tiny_host_logs, frontend="onnx",
                            measure=False)
    assert m["frontend"] == "onnx" and m["verification"]["status"] == "passed"
    x = example_input((1, 3, 16, 16), seed=5)
    np.testing.assert_allclose(run_library(tmp_path / LIBRARY, x), run_library(out / LIBRARY, x),
                               atol=1e-4)


@pytest.mark.slow
def test_x86_64_v2_compiles_and_runs(arch_file, tiny_host_logs, tmp_path):
    m = compile_arch(arch_file, "x86-64-v2", out=tmp_path, logs_dir=tiny_host_logs, untuned=True)
    assert m["target"]["tvm"]["mcpu"] == "x86-64-v2"
    assert m["verification"]["status"] == "passed" and m["measured_latency_us"] > 0


@pytest.mark.slow
def test_cuda_source_generation_without_gpu(arch_file):
    from tvm_nas.backend.library import cuda_build_env, device_sources
    from tvm_nas.backend.pipeline import build
    from tvm_nas.backend.target import to_tvm_target
    from tvm_nas.targets import load_target

    a = load_architecture(arch_file)
    model = build_network_from_arch(a)
    target = to_tvm_target(load_target("cuda"))
    fused = lower_network(model, a, None, target, prepack=False)
    with cuda_build_env():
        exe = build(fused, target, None, gpu=True, prepack=False)
    sources = device_sources(exe, "cuda")
    assert sources and any("__global__" in s for s in sources)


# -- bad input: one line, exit 2, nothing overwritten ----------------------------------------------------------
def _expect_error(tmp_path, argv: list[str], *needles: str, capsys=None) -> str:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    (out / "manifest.json").write_text("keep")
    rc = cli_main(argv + ["--out", str(out)])
    err = capsys.readouterr().err.strip() if capsys else ""
    assert rc == 2
    assert (out / "manifest.json").read_text() == "keep" and sorted(p.name for p in out.iterdir()) == [
        "manifest.json"]
    assert len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err
    return err


def test_bad_changed_space(tmp_path, arch_file, capsys):
    doc = json.loads(arch_file.read_text())
    doc["space"]["definition"]["head"]["out"] = 48  # the definition no longer matches its hash
    bad = tmp_path / "changed.arch.json"
    bad.write_text(json.dumps(doc))
    _expect_error(tmp_path, ["compile", "--arch", str(bad), "--target", "host", "--untuned"], "space.hash",
                  capsys=capsys)


def test_bad_unknown_space(tmp_path, arch_file, capsys):
    doc = json.loads(arch_file.read_text())
    del doc["space"]["definition"]
    bad = tmp_path / "unknown.arch.json"
    bad.write_text(json.dumps(doc))
    _expect_error(tmp_path, ["compile", "--arch", str(bad), "--target", "host", "--untuned"], "space.definition",
                  capsys=capsys)


def test_bad_weights(tmp_path, arch_file, capsys):
    from tvm_nas.network import Network

    torch.save(Network(load_space("tiny"), ["mbconv_k3_e6", "zero", "mbconv_k3_e3"]).state_dict(),
               tmp_path / "other.pt")
    _expect_error(tmp_path, ["compile", "--arch", str(arch_file), "--target", "host", "--untuned", "--weights",
                             str(tmp_path / "other.pt")], "do not match the architecture", capsys=capsys)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    _expect_error(tmp_path, ["compile", "--arch", str(arch_file), "--target", "host", "--untuned", "--weights",
                             str(tmp_path / "junk.pt")], "weights_only=True", capsys=capsys)


def test_bad_no_database_and_no_trials(tmp_path, arch_file, capsys):
    _expect_error(tmp_path, ["compile", "--arch", str(arch_file), "--target", "host", "--logs-dir",
                             str(tmp_path / "empty_logs")], "no tuning database", "tvm-nas profile --space tiny",
                  capsys=capsys)


def test_bad_cross_compiler_missing(tmp_path, arch_file, capsys):
    text = (data_dir("targets") / "rpi4b.yaml").read_text().replace("aarch64-linux-gnu-g++", "arm-linux-gnueabihf-g++")
    if shutil.which("arm-linux-gnueabihf-g++"):
        pytest.skip("arm-linux-gnueabihf-g++ is installed here")
    (tmp_path / "pi.yaml").write_text(text)
    _expect_error(tmp_path, ["compile", "--arch", str(arch_file), "--target", str(tmp_path / "pi.yaml"),
                             "--untuned", "--no-measure"], "apt-get install g++-arm-linux-gnueabihf",
                  capsys=capsys)


def test_bad_cuda_without_arch(tmp_path, arch_file, capsys):
    text = (data_dir("targets") / "cuda.yaml").read_text().replace("arch: sm_80, ", "")
    assert "arch" not in text.split("tvm:")[1].split("\n")[0]
    (tmp_path / "gpu.yaml").write_text(text)
    _expect_error(tmp_path, ["compile", "--arch", str(arch_file), "--target", str(tmp_path / "gpu.yaml"),
                             "--untuned"], "needs 'arch'", capsys=capsys)


def test_bad_rpc_tracker_unreachable(tmp_path, arch_file, capsys):
    text = (data_dir("targets") / "rpi4b.yaml").read_text().replace("tracker_port: 9190", "tracker_port: 1")
    (tmp_path / "pi.yaml").write_text(text)
    _expect_error(tmp_path, ["compile", "--arch", str(arch_file), "--target", str(tmp_path / "pi.yaml"),
                             "--untuned"], "--no-measure", capsys=capsys)


# -- compare ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_compare_with_baselines_writes_table(host, tiny_host_logs, arch_file, tmp_path, capsys):
    """Every peer in its best configuration (real runtimes; OpenVINO and ExecuTorch where the extra is installed),
    each row naming its setting and its output check, timed in blocks in the order asked."""
    import re

    from tvm_nas.deploy.peers import INSTALL_PEERS, PEER_NAMES, installed

    rc = cli_main(["compare", "--arch", str(arch_file), "--target", host, "--baselines", "--logs-dir",
                   str(tiny_host_logs), "--csv", str(tmp_path / "c.csv"), "--json", str(tmp_path / "c.json"),
                   "--order", "reverse"])
    assert rc == 0
    doc = json.loads((tmp_path / "c.json").read_text())
    rows = doc["rows"]
    assert doc["order"] == "reverse" and doc["peers"] == list(PEER_NAMES)
    for arch in ("a", "reference (mbconv_k3_e6)"):
        mine = [r for r in rows if r["architecture"] == arch]
        assert [r["runtime"] for r in mine] == ["tvm", "tvm-untuned", *PEER_NAMES]
        by = {r["runtime"]: r for r in mine}
        assert all(r["setting"] and r["order"] == "reverse" for r in mine)
        # blocks in reverse: TVM's shipped module last in every round
        assert by["tvm"]["sequence"][-1] == "tvm" and by["tvm"]["sequence"][0] != "tvm"
        for rt in ("tvm", "tvm-untuned", "pytorch", "onnxruntime"):
            assert by[rt]["measured_us"] > 0 and by[rt]["check"] == "ok", by[rt]
        assert "1 thread" not in by["tvm"]["setting"] and "2 threads" in by["tvm"]["setting"]
        # the peers' ratios divide by TVM's module timed as they are: through a Python call per run
        py = by["tvm"]["tried"][0]
        assert "called from Python" in py["setting"] and py["max_abs_err"] <= 1e-4
        assert by["onnxruntime"]["vs_tvm"] == pytest.approx(by["onnxruntime"]["measured_us"] / py["median"])
        assert by["tvm-untuned"]["vs_tvm"] == pytest.approx(by["tvm-untuned"]["measured_us"] / by["tvm"]["measured_us"])
        ort = by["onnxruntime"]
        picked = re.search(r"spinning (on|off)", ort["setting"]).group(1)
        assert "ORT_ENABLE_ALL" in ort["setting"]
        assert [t["setting"] for t in ort["tried"]] == [ort["setting"].replace(f"spinning {picked}", "spinning "
                                                                              + {"on": "off", "off": "on"}[picked])]
        assert ort["measured_us"] <= ort["tried"][0]["median"]  # the faster of the two is reported
        tc = by["torch-compile"]
        assert (tc["measured_us"] and "inductor" in tc["setting"] and tc["check"] == "ok") or \
            (tc["measured_us"] is None and tc["setting"].startswith("failed: ") and "\n" not in tc["setting"])
        for rt, word in (("openvino", "PERFORMANCE_HINT LATENCY"), ("executorch", "XNNPACK delegate")):
            if installed(rt):
                assert by[rt]["measured_us"] > 0 and word in by[rt]["setting"] and by[rt]["check"] == "ok", by[rt]
            else:
                assert by[rt]["setting"] == f"not installed: {INSTALL_PEERS}" and by[rt]["measured_us"] is None
    # every runtime timed under the protocol: median with its spread
    assert all(r["measurement"]["q1"] <= r["measured_us"] == r["measurement"]["median"] <= r["measurement"]["q3"]
               and r["measurement"]["stable"] in (True, False) and r["measurement"]["rounds"] >= 1
               for r in rows if r["measured_us"] is not None)
    assert all(r["measurement"] is None for r in rows if r["measured_us"] is None)
    header = (tmp_path / "c.csv").read_text().splitlines()[0]
    assert header.startswith("architecture,target,runtime") and ",setting,check," in header
    assert ",measured_us,measurement.median,measurement.q1,measurement.q3,measurement.stable,measurement.rounds," \
        in header
    out = capsys.readouterr().out
    assert "latency on host, µs (median (IQR)" in out and "how each runtime ran" in out and "check" in out
    assert "spinning" in out and re.search(r"order\s+reverse", out)


def test_compare_says_which_peer_is_not_installed(host_build, host, arch_file, monkeypatch):
    """A peer whose package is missing is a row with the install line, not a failure; the others still run."""
    import sys

    from rich.console import Console

    from tvm_nas.deploy import compare_table
    from tvm_nas.deploy.compare import Built, compare_built
    from tvm_nas.deploy.peers import INSTALL_PEERS
    from tvm_nas.targets import load_target

    for module in ("openvino", "executorch"):  # as on a plain `pip install tvm-nas`
        monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.setenv("TVM_NAS_PEERS", "onnxruntime,openvino,executorch")
    out, _, _ = host_build
    rows = compare_built([Built(load_architecture(arch_file), load_target(host), None, out)])
    by = {r["runtime"]: r for r in rows}
    assert list(by) == ["tvm", "tvm-untuned", "onnxruntime", "openvino", "executorch"]
    for rt in ("openvino", "executorch"):
        assert by[rt]["setting"] == f"not installed: {INSTALL_PEERS}" and by[rt]["measured_us"] is None
        assert by[rt]["check"] is None
    assert by["onnxruntime"]["measured_us"] > 0 and by["onnxruntime"]["check"] == "ok"
    console = Console(width=100, record=True, color_system=None)
    console.print(compare_table(rows))
    text = console.export_text()
    assert text.count("not installed") >= 4  # in the figure's place and, with the install line, below
    assert 'not installed: pip install "tvm-nas[peers]"' in text
