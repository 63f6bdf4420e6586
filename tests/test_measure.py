"""The measurement protocol, a table that holds every kernel of a compiled net, `validate`, NaN verification."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli, photo_folders, quick_target

from tvm_nas.errors import TvmNasError
from tvm_nas.timing import Protocol, interleave, python_sampler

FAST = Protocol(number=1, repeat=5, min_repeat_ms=0, rounds=3, max_rounds=5, tolerance=0.3)  # sleeps: loose


# -- protocol --------------------------------------------------------------------------------------------------
def _sleeper(log: list, name: str, durations):
    it = iter(durations)

    def sample():
        d = next(it)
        log.append(name)
        out = []
        for _ in range(3):
            t = time.perf_counter()
            time.sleep(d)
            out.append((time.perf_counter() - t) * 1e6)
        return out

    return sample


def test_rounds_interleave_and_an_unstable_module_is_remeasured_and_flagged():
    log: list[str] = []
    steady = [0.03] * 10
    jumpy = [0.03, 0.15, 0.03, 0.15, 0.15, 0.03, 0.15, 0.03]  # two modes, 5x apart (warm-up first)
    t = interleave({"a": _sleeper(log, "a", steady), "b": _sleeper(log, "b", jumpy)}, FAST)
    assert log[:8] == ["a", "b"] * 4  # warm-up, then A B A B ...: never all of A before B
    assert t["a"].stable and t["a"].rounds == 3
    assert not t["b"].stable and t["b"].rounds == FAST.max_rounds  # re-measured, still unstable: flagged
    assert t["b"].median > 1.5 * min(t["b"].round_medians)  # the pooled median, not the quietest round
    assert "UNSTABLE" in t["b"].label() and "IQR" in t["a"].label()
    assert t["a"].q1 <= t["a"].median <= t["a"].q3


def test_a_settling_module_is_remeasured_and_its_early_rounds_discarded():
    # slow while the machine settles (a compile just ended), then steady: the agreeing rounds make the figure
    log: list[str] = []
    settling = [0.03, 0.15, 0.12, 0.03, 0.03, 0.03, 0.03]  # warm-up, two slow rounds, then steady
    t = interleave({"s": _sleeper(log, "s", settling)}, FAST)["s"]
    assert t.stable and t.rounds == 5 and t.discarded == 2
    assert t.median < 0.06e6 and t.count == 3 * 3  # the last three rounds' samples only
    assert len(t.round_medians) == 5 and min(t.round_medians[:2]) > 0.1e6  # the discarded rounds stay on record
    assert t.to_json()["discarded"] == 2


def test_python_sampler_fills_its_window():
    calls = []
    s, number = python_sampler(lambda: calls.append(1), Protocol(number=2, repeat=4, min_repeat_ms=5))
    t0 = time.perf_counter()
    assert len(s()) == 4
    assert time.perf_counter() - t0 >= 0.02 and len(calls) > 8  # a call of ~1 µs: many runs fill each 5 ms


# -- the table holds every kernel of a compiled net ------------------------------------------------------------
@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> str:
    """This machine's CPU with short measurement windows (a test needs the protocol, not precise figures)."""
    return str(quick_target(tmp_path_factory.mktemp("targets")))


@pytest.fixture(scope="module")
def micro_logs(micro_space, quick, tmp_path_factory) -> Path:
    from tvm_nas.profile import profile

    logs = tmp_path_factory.mktemp("micro_logs")
    profile(str(micro_space), quick, trials=0, logs_dir=logs)
    return logs


def test_compiled_net_has_no_kernel_outside_the_table(micro_space, micro_logs, quick):
    from tvm_nas.arch import reference_arch
    from tvm_nas.backend import tuning
    from tvm_nas.backend.target import to_tvm_target
    from tvm_nas.deploy import build_network_from_arch
    from tvm_nas.deploy.compile import lower_network
    from tvm_nas.profile.model import LatencyModel as LatencyTable  # the table and what validate fitted to it
    from tvm_nas.space import load_space
    from tvm_nas.targets import load_target

    space = load_space(str(micro_space))
    table = LatencyTable.load(micro_logs / "quick" / "micro.latency.json", space=space)
    a = reference_arch(space, "mbconv_k3_e3")
    model = build_network_from_arch(a)
    tgt = to_tvm_target(load_target(quick))
    fused = lower_network(model, a, None, tgt, prepack=True)
    net = set(tuning.dedup({"n": tuning.extract_tasks(fused, tgt)}))
    in_table = {t.split("#")[-1] for e in table.entries.values() for t in e["tasks"]}
    assert net <= in_table, net - in_table  # the input transpose and the pooling kernel included
    # the module call's own cost is measured once and counted once per net
    inv = table.invocation_us
    assert inv > 0 and table.meta["invocation"]["q1"] <= inv
    raw = sum(table.entries[k.key]["median"] for k in space.fixed_layers()) + sum(
        table.entries[b.key(op).key]["median"] for b, op in zip(space.blocks(), a.ops, strict=True) if op != "zero")
    n_ops = len(space.fixed_layers()) + sum(op != "zero" for op in a.ops)
    assert table.predict(space, a.ops) == pytest.approx(raw - (n_ops - 1) * inv)
    e = next(iter(table.entries.values()))
    assert e["q1"] <= e["median"] <= e["q3"] and "stable" in e


# -- validate --------------------------------------------------------------------------------------------------
def _check_validate(out: Path, n_random: int):
    doc = json.loads((out / "validate.json").read_text())
    s = doc["summary"]
    names = [r["net"] for r in doc["nets"]]
    assert {"fastest", "slowest"} <= set(names) and sum(n.startswith("random-") for n in names) <= n_random
    for k in ("median_abs_error_pct", "worst_abs_error_pct", "within_5pct", "within_10pct", "kendall_tau",
              "spearman_rho", "load_avg"):
        assert k in s
    for r in doc["nets"]:
        t = r["measurement"]  # a timing is one object: median, quartiles, stable, rounds
        assert t["q1"] <= r["measured_us"] == t["median"] <= t["q3"] and r["max_abs_err"] <= 1e-4
        assert not {"measured_q1", "measured_q3", "stable"} & set(r)
        assert r["error_pct"] == pytest.approx(100 * (r["predicted_us"] - r["measured_us"]) / r["measured_us"])
    assert (out / "validate.png").read_bytes()[:4] == b"\x89PNG"
    return doc


def test_validate_locally(micro_space, micro_logs, quick, tmp_path):
    import shutil

    logs = tmp_path / "logs"
    shutil.copytree(micro_logs, logs)  # validate may write a calibration beside the table
    r = cli("validate", "--space", str(micro_space), "--target", quick, "--nets", "2", "--logs-dir",
            str(logs), "--out", str(tmp_path / "v"))
    assert r.returncode == 0, r.stderr[-2000:]
    doc = _check_validate(tmp_path / "v", 2)
    assert doc["where"].startswith("local")
    assert "Kendall τ" in r.stdout and "load average" in r.stdout
    # the micro space has two distinct nets: too few to fit a calibration (the fit is tested below), none written
    assert len(doc["nets"]) < 5 and doc["summary"]["calibration"] is None
    assert not (logs / "quick" / "micro.calibration.json").exists() and "calibration" not in r.stdout



def test_validate_reuses_finished_builds_and_writes_beside_the_model_it_was_given(micro_space, micro_logs, quick,
                                                                                  tmp_path):
    """A run's validation loads the compile stage's libraries instead of compiling them again, checks them against
    the weights they were built with, and predicts (and would fit) with the run's own copy of the table."""
    from tvm_nas.arch import arch_document, load_architecture, write_arch
    from tvm_nas.deploy import compile_arch
    from tvm_nas.deploy.compile import Built
    from tvm_nas.deploy.validate import validate
    from tvm_nas.profile.model import LatencyModel
    from tvm_nas.space import load_space
    from tvm_nas.targets import load_target

    space, spec = load_space(str(micro_space)), load_target(quick)
    own = LatencyModel.of(space, spec, micro_logs).copy_to(tmp_path / "run-table")
    arch = write_arch(tmp_path / "a.arch.json", arch_document(space, ["mbconv_k3_e3"], None, None))
    build = tmp_path / "build"
    compile_arch(arch, quick, out=build, logs_dir=micro_logs, measure=False, verify=False, table=own)
    assert json.loads((build / "manifest.json").read_text())["latency_table"]["path"] == str(own.path)
    before = (build / "model.so").stat().st_mtime_ns
    doc = validate(space, spec, n=0, archs=[arch], logs_dir=micro_logs, out=tmp_path / "v", model=own,
                   built=[Built(load_architecture(arch), spec, None, build)])
    row = next(r for r in doc["nets"] if r["ops"] == ["mbconv_k3_e3"])
    assert row["build"] == str(build) and (build / "model.so").stat().st_mtime_ns == before
    assert all(r["build"] is None for r in doc["nets"] if r is not row)  # the others were compiled here
    assert doc["table"]["path"] == str(own.path)


def test_validate_refuses_a_second_writer_and_removes_a_killed_ones_libraries(micro_space, micro_logs, quick,
                                                                              tmp_path):
    import shutil
    import subprocess
    import tempfile

    from tvm_nas.deploy.validate import STAGE_PREFIX
    from tvm_nas.io import exclusive

    logs = tmp_path / "logs"
    shutil.copytree(micro_logs, logs)
    # a validation killed with -9: its staging folder of libraries stays behind, its process is gone
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = Path(tempfile.gettempdir()) / f"{STAGE_PREFIX}{dead.pid}"
    stale.mkdir(exist_ok=True)
    (stale / "model.so").write_bytes(b"left behind")
    args = ("validate", "--space", str(micro_space), "--target", quick, "--nets", "0", "--logs-dir", str(logs),
            "--out", str(tmp_path / "v"))
    with exclusive(tmp_path / "v" / "validate.json", "validation"):  # another validation writes this folder
        r = cli(*args)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "another tvm-nas process" in r.stderr
    assert not (tmp_path / "v" / "validate.json").exists()
    r = cli(*args)
    assert r.returncode == 0, r.stderr[-2000:]
    assert not stale.exists()


def test_two_measuring_calls_of_one_process_each_run_their_own_net(micro_space, micro_logs, quick, tmp_path):
    """Each call stages its libraries under the same labels (``net-0``); the dynamic loader keeps one handle per
    file name, so a library loaded from a reused path once ran the first call's net (a wrong-output error, or
    another net's timing). Loads of different libraries from one path each run their own code."""
    from tvm_nas.arch import Arch, arch_document
    from tvm_nas.backend import measure
    from tvm_nas.deploy.model import build_network_from_arch, example_input, torch_forward
    from tvm_nas.deploy.validate import _compile, measure_nets
    from tvm_nas.profile.model import LatencyModel
    from tvm_nas.space import load_space
    from tvm_nas.targets import load_target

    space, spec = load_space(str(micro_space)), load_target(quick)
    model = LatencyModel.of(space, spec, micro_logs)
    first = measure_nets(space, spec, [["mbconv_k3_e3"]], model, micro_logs)
    second = measure_nets(space, spec, [["zero"]], model, micro_logs)  # also net-0, a different net
    assert first[0]["median"] > 0 and second[0]["median"] > 0
    # the same at the loading layer, with the first library still held
    lib, held, x = tmp_path / "model.so", [], None
    for ops in (["mbconv_k3_e3"], ["zero"]):
        a = Arch(space, ops, arch_document(space, ops, None, None), None, "n")
        net = build_network_from_arch(a, None, 0)
        exe, _ = _compile(net, a, spec, None)
        measure.export(exe, lib, spec)
        x = example_input(a.input_shape, 0)
        held.append(measure.load(lib, [x], spec))
        np.testing.assert_allclose(held[-1].outputs()[0], torch_forward(net, x), atol=1e-4)


# validate measures and hands its rows to the latency model, which fits and decides what is kept beside the table
def _in_use(model, space, rows, console):
    return model.in_use(space, rows, console.print)


def _calibrate(model, path, rows, summary, console):
    assert Path(path) == model.path
    return model.learn_calibration(rows, summary, console.print)


def _correct(model, path, rows, summary, console):
    assert Path(path) == model.path
    return model.learn_correction(rows, summary, console.print)


# -- calibration -------------------------------------------------------------------------------------------------
def test_calibration_is_fitted_and_scored_leave_one_out():
    from tvm_nas.profile.calibration import fit_calibration

    p = [100.0, 150.0, 200.0, 260.0, 300.0, 420.0]
    fit = fit_calibration(p, [1.4 * v + 3 for v in p])  # the table misses 40% and 3 µs per net
    assert fit["scale"] == pytest.approx(1.4) and fit["offset_us"] == pytest.approx(3)
    assert fit["better"] and fit["loo_median_abs_error_pct"] < 1e-6 < fit["additive_median_abs_error_pct"]
    assert fit_calibration(p, p)["better"] is False  # an exact table needs no calibration
    assert fit_calibration(p[:4], p[:4]) is None  # too few nets to say
    assert fit["form"] == "affine" and fit["forms"]["proportional"]["qualifies"] is True  # the better form wins


def test_calibration_never_trades_the_fast_nets_for_the_median():
    from tvm_nas.profile.calibration import fit_calibration

    # the tuned cifar table at one thread against its 23 validated nets (docs/measurement.md): one fast net, the
    # rest 900-2,500 µs. The affine fit's offset (-109 µs) misses the fast net by 32% where the plain sum was 0.9%.
    pred = [345.9, 2220.3, 1711.1, 1524.8, 1396.8, 1493.4, 1175.2, 1263.5, 1321.1, 1475.2, 1626.4, 904.1, 1322.0,
            1340.5, 1260.9, 1328.9, 1409.3, 875.1, 1333.4, 1526.4, 1509.5, 1321.5, 1572.5]
    meas = [349.1, 2469.6, 1857.6, 1655.9, 1457.4, 1613.0, 1199.1, 1299.1, 1371.0, 1555.7, 1822.3, 925.2, 1380.4,
            1440.9, 1316.0, 1407.3, 1500.7, 909.6, 1359.3, 1645.4, 1583.0, 1352.2, 1640.1]
    fit = fit_calibration(pred, meas)
    assert fit["forms"]["affine"]["loo_worst_abs_error_pct"] > 30 and not fit["forms"]["affine"]["qualifies"]
    assert fit["better"] and fit["form"] == "proportional" and fit["offset_us"] == 0.0
    assert fit["loo_worst_abs_error_pct"] <= fit["additive_worst_abs_error_pct"]
    assert fit["loo_median_abs_error_pct"] < fit["additive_median_abs_error_pct"] / 1.5
    assert abs(fit["loo_us"][0] / meas[0] - 1) < 0.1  # the fast net stays where the table put it


def test_learned_correction_beats_the_calibration_on_nets_it_was_not_trained_on():
    import xgboost as xgb

    from tvm_nas.deploy.validate import statistics
    from tvm_nas.profile.calibration import fit_calibration
    from tvm_nas.profile.correction import MIN_NETS, Correction, fit_correction

    # the 23 nets of the tuned cifar table (docs/measurement.md): the plain sum misses more the bigger the net
    # (-0.9% for the fastest, -10% for the slowest); a proportional calibration leaves two nets outside ±5%
    nets = json.loads((Path(__file__).parent / "data" / "proxyless-cifar-host-validated.json").read_text())["nets"]
    ops, pred, meas = ([n[k] for n in nets] for k in ("ops", "predicted_us", "measured_us"))
    cal = fit_calibration(pred, meas)
    base = {"name": "calibration", "median_abs_error_pct": cal["loo_median_abs_error_pct"],
            "worst_abs_error_pct": cal["loo_worst_abs_error_pct"]}
    assert cal["loo_worst_abs_error_pct"] > 5
    fit = fit_correction(ops, pred, meas, base)
    loo = 100 * np.abs(np.array(fit["loo_us"]) / np.array(meas) - 1)
    assert fit["better"] and fit["loo_median_abs_error_pct"] < base["median_abs_error_pct"]
    assert loo.max() <= 5 and fit["loo_worst_abs_error_pct"] == pytest.approx(loo.max())  # every net within ±5%
    # the table sum alone does it, so the correction keeps the table's order: the search ranks nets by the table
    assert fit["form"] == "sum" and fit["features"] == ["table_sum_us"] and fit["forms"]["ops"]["qualifies"]
    assert statistics(fit["loo_us"], meas)["kendall_tau"] >= 0.9
    booster = xgb.Booster()
    booster.load_model(bytearray(fit["booster"].encode()))
    c = Correction(fit, booster)
    sums = np.linspace(100, 4000, 400)
    assert np.all(np.diff([c.predict(ops[0], v) for v in sums]) > 0)
    # a table that misses a fixed share of every net: the calibration already says it all, the trees cannot beat it
    exact = fit_calibration(pred, [1.07 * p for p in pred])
    fit = fit_correction(ops, pred, [1.07 * p for p in pred],
                         {"name": "calibration", "median_abs_error_pct": exact["loo_median_abs_error_pct"],
                          "worst_abs_error_pct": exact["loo_worst_abs_error_pct"]})
    assert not fit["better"]
    assert fit_correction(ops[:MIN_NETS - 1], pred[:MIN_NETS - 1], meas[:MIN_NETS - 1], base) is None


def test_validation_writes_the_correction_and_every_whole_net_prediction_uses_it(tiny_table, tmp_path):
    import shutil

    from rich.console import Console

    from tvm_nas.deploy.validate import random_archs
    from tvm_nas.profile.correction import correction_path
    from tvm_nas.profile.model import LatencyModel as LatencyTable  # the table and what validate fitted to it
    from tvm_nas.search.derive import derive
    from tvm_nas.space import load_space

    space = load_space("tiny")
    path = tmp_path / "tiny.latency.json"
    shutil.copyfile(tiny_table, path)
    table = LatencyTable.load(path, space=space)
    archs = list(dict.fromkeys(tuple(x) for x in random_archs(space, 200, seed=3)))
    archs = [list(x) for x in archs[:24]]
    assert len(archs) == 24
    big = space.blocks()[0].candidates[-1]
    # a miss no single scale follows: each block that chose the largest candidate costs 12% more in the net
    truth = [table.predict(space, a) * (1 + 0.12 * a.count(big)) for a in archs]
    rows = [{"ops": a, "predicted_us": table.predict(space, a), "measured_us": m}
            for a, m in zip(archs[:16], truth[:16], strict=True)]
    summary = {"unstable": [], "load_avg": [1.0], "median_abs_error_pct": 1.0, "worst_abs_error_pct": 1.0}
    from tvm_nas.deploy.validate import statistics

    summary.update(statistics([r["predicted_us"] for r in rows], [r["measured_us"] for r in rows]))
    console = Console(quiet=True)
    summary["calibration"] = _calibrate(table, path, rows, summary, console)
    fit = _correct(table, path, rows, summary, console)
    assert fit["better"] and correction_path(path).is_file() and "booster" not in fit
    assert all("corrected_us" in r for r in rows)
    corrected = LatencyTable.load(path, space=space)
    a = archs[20]
    plain = corrected.predict(space, a, calibrated=False)
    assert plain == pytest.approx(table.predict(space, a))
    assert corrected.predict(space, a) == pytest.approx(corrected.correction.predict(a, plain))
    # the nets it was not fitted on: closer to the truth than the plain sum
    fresh = [{"ops": x, "measured_us": m} for x, m in zip(archs[16:], truth[16:], strict=True)]
    st = _in_use(corrected, space, fresh, console)
    assert st["model"] == "learned correction" and st["nets"] == len(fresh)
    plain_err = statistics([table.predict(space, x) for x in archs[16:]], truth[16:])["median_abs_error_pct"]
    assert st["median_abs_error_pct"] < plain_err / 2
    assert _in_use(corrected, space, rows, console) is None  # the nets it was fitted on tell nothing
    # the search's gradient keeps the linear per-op table; the derived net's figure is the corrected one
    cal = corrected.calibration or {"scale": 1.0, "offset_us": 0.0}
    onehot = sum(v[b.candidates.index(o)] for v, b, o in zip(corrected.block_matrix(space), space.blocks(), a,
                                                              strict=True))
    assert corrected.fixed_latency(space) + onehot == pytest.approx(cal["scale"] * plain + cal["offset_us"])
    probs = [np.eye(len(b.candidates))[b.candidates.index(o)] for b, o in zip(space.blocks(), a, strict=True)]
    assert derive(probs, space, corrected)["predicted_latency_us"] == pytest.approx(corrected.predict(space, a))
    # fitted to other entries, or damaged: not used
    doc = json.loads(correction_path(path).read_text())
    correction_path(path).write_text(json.dumps({**doc, "table_hash": "stale"}))
    assert LatencyTable.load(path, space=space).correction is None
    correction_path(path).write_text(json.dumps({**doc, "booster": "{not a model"}))
    assert LatencyTable.load(path, space=space).correction is None
    correction_path(path).write_text("{")
    # the table falls back on its calibration (or its plain sum)
    assert LatencyTable.load(path, space=space).predict(space, a) == pytest.approx(cal["scale"] * plain
                                                                                   + cal["offset_us"])


def test_calibrated_table_predicts_the_affine_map(micro_space, micro_logs, tmp_path):
    import shutil

    from tvm_nas.arch import reference_arch
    from tvm_nas.profile.calibration import calibration_path
    from tvm_nas.profile.model import LatencyModel as LatencyTable  # the table and what validate fitted to it
    from tvm_nas.space import load_space

    space = load_space(str(micro_space))
    path = tmp_path / "micro.latency.json"
    shutil.copyfile(micro_logs / "quick" / "micro.latency.json", path)
    plain = LatencyTable.load(path, space=space)
    ops = reference_arch(space, "mbconv_k3_e3").ops
    raw = plain.predict(space, ops)
    calibration_path(path).write_text(json.dumps({"scale": 1.5, "offset_us": 2.0, "table_hash": plain.hash}))
    table = LatencyTable.load(path, space=space)
    assert table.predict(space, ops) == pytest.approx(1.5 * raw + 2.0)
    assert table.predict(space, ops, calibrated=False) == pytest.approx(raw)
    # the search's expected latency (fixed + Σ p·v) is the same affine map
    vec = table.block_matrix(space)
    onehot = sum(v[b.candidates.index(op)] for v, b, op in zip(vec, space.blocks(), ops, strict=True))
    assert table.fixed_latency(space) + onehot == pytest.approx(1.5 * raw + 2.0)
    calibration_path(path).write_text(json.dumps({"scale": 1.5, "offset_us": 2.0, "table_hash": "stale"}))
    assert LatencyTable.load(path, space=space).predict(space, ops) == pytest.approx(raw)  # fitted to old entries
    calibration_path(path).write_text(json.dumps({"scale": -1, "offset_us": 2.0, "table_hash": plain.hash}))
    assert LatencyTable.load(path, space=space).calibration is None


def test_builds_are_timed_interleaved_and_their_outputs_checked(micro_space, tmp_path):
    from tvm_nas.arch import arch_document, load_architecture, write_arch
    from tvm_nas.deploy import compile_arch
    from tvm_nas.deploy.compile import Built, time_builds
    from tvm_nas.space import load_space
    from tvm_nas.targets import load_target

    quick = str(quick_target(tmp_path))
    space = load_space(str(micro_space))
    builds = {}
    for name, ops in (("a", ["mbconv_k3_e3"]), ("b", ["zero"])):
        arch = write_arch(tmp_path / f"{name}.arch.json", arch_document(space, ops, None, None))
        m = compile_arch(arch, quick, out=tmp_path / name, untuned=True, measure=False, verify=False)
        assert m["measured_latency_us"] is None
        builds[name] = Built(load_architecture(arch), load_target(quick), None, tmp_path / name)
    got = time_builds(builds, quick)
    for name in builds:
        m = json.loads((tmp_path / name / "manifest.json").read_text())
        assert m["measured_latency_us"] == got[name] == m["measurement"]["median"] > 0
        assert m["measurement"]["q1"] <= got[name] <= m["measurement"]["q3"] and m["measurement"]["rounds"] >= 1
        assert "measured_iqr_us" not in m  # the timing is one object
        assert "interleaved with 1 other module(s)" in m["measurement"]["how"] and "round_medians" in m["measurement"]
    # other weights and input than the modules were built with: their outputs differ, and nothing is timed
    with pytest.raises(TvmNasError, match="differ"):
        time_builds(builds, quick, seed=1)


def test_validate_over_rpc(micro_space, rpc_target, tmp_path):
    from tvm_nas.profile import profile

    logs = tmp_path / "logs"
    profile(str(micro_space), str(rpc_target), trials=0, logs_dir=logs)
    r = cli("validate", "--space", str(micro_space), "--target", str(rpc_target), "--nets", "1", "--logs-dir",
            str(logs), "--out", str(tmp_path / "v"))
    assert r.returncode == 0, r.stderr[-2000:]
    doc = _check_validate(tmp_path / "v", 1)
    assert doc["where"].startswith("rpc 127.0.0.1")


def test_search_chooses_its_net_by_measurement_on_the_board(micro_space, rpc_target, tmp_path):
    """tvm-nas search --measure-budget: the nets derived around the budget are compiled here and timed on the board
    through the tracker (never on the machine that searched), and the slowest meeting the budget is kept."""
    from tvm_nas.profile import profile
    from tvm_nas.profile.model import LatencyModel
    from tvm_nas.space import load_space

    logs = tmp_path / "logs"
    table = profile(str(micro_space), str(rpc_target), trials=0, logs_dir=logs)
    space = load_space(str(micro_space))
    model = LatencyModel.load(table.path, space=space)
    full = model.predict(space, ["mbconv_k3_e3"])
    budget = 1.01 * full  # the net with its block is predicted just under it: with the 3% margin, only without it
    train, _ = photo_folders(tmp_path / "photos", train=40, test=4, size=8, classes=4)
    out = tmp_path / "run"
    r = cli("search", "--space", str(micro_space), "--target", str(rpc_target), "--data", f"imagefolder:{train}",
            "--latency-ms", str(budget / 1000), "--logs-dir", str(logs), "--out", str(out), "--epochs", "2",
            "--warmup-epochs", "1", "--measure-budget", "--quiet")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    doc = json.loads((out / "final.arch.json").read_text())
    d = doc["derivation"]
    assert sorted(tuple(m["ops"]) for m in d["measured"]) == [("mbconv_k3_e3",), ("zero",)]
    assert all(m["measurement"]["where"].startswith("rpc 127.0.0.1") for m in d["measured"]), d["measured"]
    met = [m for m in d["measured"] if m["measured_us"] <= budget]
    assert d["budget_met"] == bool(met) and doc["ops"] == (max(met, key=lambda m: m["measured_us"]) if met else
                                                           min(d["measured"], key=lambda m: m["measured_us"]))["ops"]
    assert "nets measured" in " ".join(r.stdout.split()), r.stdout[-2000:]


def test_validate_without_table_is_one_line(micro_space, tmp_path):
    r = cli("validate", "--space", str(micro_space), "--target", "host", "--logs-dir", str(tmp_path))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "tvm-nas profile" in r.stderr


# -- NaN fails every check -------------------------------------------------------------------------------------
def test_nan_weights_are_refused(micro_space, tmp_path):
    from tvm_nas.arch import arch_document, write_arch
    from tvm_nas.network import Network
    from tvm_nas.space import load_space

    space = load_space(str(micro_space))
    arch = write_arch(tmp_path / "a.arch.json", arch_document(space, ["mbconv_k3_e3"], None, None))
    state = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
             for k, v in Network(space, ["mbconv_k3_e3"]).state_dict().items()}
    torch.save(state, tmp_path / "nan.pt")
    r = cli("compile", "--arch", str(arch), "--target", "host", "--untuned", "--weights", str(tmp_path / "nan.pt"),
            "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and "NaN" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "verification passed" not in r.stdout + r.stderr


def test_nan_outputs_fail_verification(micro_space, tmp_path):
    from tvm_nas.arch import reference_arch
    from tvm_nas.deploy import build_network_from_arch, compile_arch
    from tvm_nas.deploy.compile import verify_library
    from tvm_nas.deploy.model import example_input
    from tvm_nas.deploy.onnx import export_onnx
    from tvm_nas.space import load_space
    from tvm_nas.targets import load_target

    a = reference_arch(load_space(str(micro_space)), "mbconv_k3_e3")
    m = compile_arch(a, "host", out=tmp_path / "b", untuned=True, measure=False, verify=False)
    x = example_input(a.input_shape)
    expected = np.full(m["output"]["shape"], np.nan, np.float32)  # what a net of NaN weights computes
    with pytest.raises(TvmNasError, match="differ"):
        verify_library(tmp_path / "b" / "model.so", load_target("host"), x, expected)
    model = build_network_from_arch(a)
    with torch.no_grad():
        model.classifier.linear.weight.fill_(float("nan"))
    with pytest.raises(TvmNasError, match="differ"):
        export_onnx(model, x, tmp_path / "nan.onnx")


def test_validation_writes_keeps_or_removes_the_calibration(micro_space, micro_logs, tmp_path):
    import shutil

    from rich.console import Console

    from tvm_nas.profile.calibration import calibration_path
    from tvm_nas.profile.model import LatencyModel as LatencyTable  # the table and what validate fitted to it
    from tvm_nas.space import load_space

    space = load_space(str(micro_space))
    path = tmp_path / "micro.latency.json"
    shutil.copyfile(micro_logs / "quick" / "micro.latency.json", path)
    table = LatencyTable.load(path, space=space)
    where = calibration_path(path)
    pred = [20.0, 30.0, 45.0, 60.0, 80.0, 100.0]

    def validate(meas, unstable=()):
        rows = [{"predicted_us": p, "measured_us": m, "ops": ["mbconv_k3_e3"]} for p, m in zip(pred, meas, strict=True)]
        return _calibrate(table, path, rows, {"unstable": list(unstable), "load_avg": [1.0]}, Console(quiet=True))

    assert validate([1.3 * p for p in pred])["better"] and where.is_file()  # the table misses 30%: written
    assert LatencyTable.load(path, space=space).predict(space, ["mbconv_k3_e3"] * len(space.blocks())) > 0
    # a machine that changed speed mid-validation (most nets unstable) says nothing about the table: kept
    fit = validate([2.0 * p for p in pred], unstable=["a", "b", "c"])
    assert not fit["better"] and where.is_file() and json.loads(where.read_text())["scale"] == pytest.approx(1.3)
    # stable nets that the plain sum already predicts: the earlier calibration is removed
    fit = validate([p * (1 + 0.01 * (-1) ** i) for i, p in enumerate(pred)])
    assert not fit["better"] and not where.exists() and fit["removed"] == str(where)
    assert LatencyTable.load(path, space=space).calibration is None
