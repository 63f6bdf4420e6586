"""The whole chain on the tiny space, interrupted and resumed at every stage boundary, and its report."""

from __future__ import annotations

import itertools
import json
import re

from conftest import cli, photo_folders, quick_target

from tvm_nas.io import sha256_file
from tvm_nas.profile.model import LatencyModel as LatencyTable  # the table and what validate fitted to it
from tvm_nas.profile.profiler import profile
from tvm_nas.space import canonical_ops, load_space
from tvm_nas.stages import STAGES


def test_whole_chain_resumes_at_every_boundary(tmp_path, monkeypatch):
    # the compare stage's peers: two are enough for the chain (every peer: tests/test_deploy.py, test_peers.py)
    monkeypatch.setenv("TVM_NAS_PEERS", "pytorch,onnxruntime")
    # the chain and its bookkeeping are under test, not its figures: short measurement windows
    quick = quick_target(tmp_path)
    logs = tmp_path / "logs"
    profile("tiny", str(quick), trials=0, logs_dir=logs)  # the profile stage reuses this table: same settings
    run = tmp_path / "run"
    train, test = photo_folders(tmp_path / "photos", train=60, test=20)
    common = ["--epochs", "2", "--warmup-epochs", "1", "--train-epochs", "3", "--data", f"imagefolder:{train}",
              "--test-data", f"imagefolder:{test}"]
    seconds, output = {}, {}
    for i, stage in enumerate(STAGES):
        args = (["--space", "tiny", "--target", str(quick), "--trials", "0", "--logs-dir", str(logs), "--out",
                 str(run)] if i == 0 else ["--resume", str(run)])
        r = cli("run", *args, *common, "--stop-after", stage, timeout=1200)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        state = json.loads((run / "run.json").read_text())
        assert list(state["done"]) == list(STAGES[: i + 1])
        for s, sec in seconds.items():  # finished stages are not run again
            assert state["done"][s]["seconds"] == sec
        seconds[stage] = state["done"][stage]["seconds"]
        output[stage] = r.stdout
    # a resumed run keeps its settings: one given again must be the same (the loop gave the same ones), and
    # stopping after a finished stage runs nothing
    before = (run / "run.json").read_bytes()
    r = cli("run", "--resume", str(run), "--stop-after", "profile", timeout=300)
    assert r.returncode == 0 and "already done" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
    r = cli("run", "--resume", str(run), "--space", "proxyless-cifar", "--stop-after", "profile", timeout=300)
    err = r.stderr.strip()
    assert r.returncode == 2 and len(err.splitlines()) == 1 and "--space proxyless-cifar" in err, err
    assert (run / "run.json").read_bytes() == before
    # the compare stage shows its table, as `tvm-nas compare --baselines` does
    assert "latency on" in output["compare"] and "onnxruntime" in output["compare"], output["compare"][-2000:]
    # the profile stage found every op of the copied table: nothing measured again
    assert re.search(r"(\d+) unique,\s+\1\s+already\s+measured", output["profile"]), output["profile"][-2000:]

    summary = json.loads((run / "summary.json").read_text())
    for name, rel in summary["artifacts"].items():
        assert (run / rel).is_file(), name
    page = (run / "report" / "index.html").read_text()
    images = re.findall(r'<img[^>]+src="([^"]+)"', page)
    assert len(images) >= 4
    for src in images:
        data = (run / "report" / src).read_bytes()
        assert data.startswith(b"\x89PNG") or b"<svg" in data[:500], src
    searched = summary["nets"][0]
    assert searched["kind"] == "searched"
    # the searched net was chosen by its measured latency among nets derived around the budget: the slowest whose
    # measured median met it (the table's prediction may be over the budget by up to the margin)
    tried = json.loads((run / state["done"]["search"]["arch"]).read_text())["derivation"]["measured"]
    met = [t for t in tried if t["measured_us"] <= summary["budget_us"]]
    assert 1 <= len(tried) <= 4 and met and summary["arch"]["budget_met"]
    assert searched["ops"] == max(met, key=lambda t: t["measured_us"])["ops"]
    assert state["done"]["search"]["measured_us"] == max(t["measured_us"] for t in met)
    assert searched["predicted_us"] <= summary["budget_us"] * 1.03 + 1e-6
    assert "by measurement" in " ".join(output["search"].split()), output["search"][-2000:]
    assert f"{searched['predicted_us']:.1f}" in page
    assert f"{searched['measurement']['median']:.1f}" in page
    assert f"{100 * searched['accuracy']:.1f}% (test)" in page
    # every accuracy comes from the held-out folder, and the searched net is ranked among nets of its latency
    assert all(n["accuracy_set"] == "test" and n["accuracy"] == n["test_accuracy"] for n in summary["nets"])
    matched = [n for n in summary["nets"] if n["kind"] == "matched"]
    assert len(matched) == 3 and all(n["ops"] != searched["ops"] for n in matched)
    # drawn from the nets timed beside the searched net (its rivals of about the budget's latency and the nets
    # derived around the budget): those within 5% of its measured latency first, the nearest where fewer are
    space = load_space("tiny")
    nets = {tuple(canonical_ops(space, ops)) for ops in itertools.product(*(b.candidates for b in space.blocks()))}
    done = state["done"]["search"]
    ref, pool = done["measured_us"], done["rivals"]
    assert [n["ops"] for n in matched] == [m["ops"] for m in done["matched"]]
    assert 3 <= len(pool) <= 8 + len(tried) and all(tuple(r["ops"]) in nets for r in pool)
    assert tuple(canonical_ops(space, searched["ops"])) not in {tuple(r["ops"]) for r in pool}
    assert {tuple(r["ops"]) for r in pool} >= {tuple(canonical_ops(space, t["ops"])) for t in tried
                                                 if t["ops"] != searched["ops"]}
    gaps = sorted(abs(r["measured_us"] - ref) / ref for r in pool)
    for m in done["matched"]:
        assert abs(m["measured_us"] - ref) / ref <= max(0.05, gaps[2]) + 1e-9, (m, ref, gaps[:3])
    rk = summary["ranking"]
    assert rk["accuracy_set"] == "test" and rk["matched"] == 3
    assert rk["rank"] == 1 + sum(n["accuracy"] > searched["accuracy"] for n in matched)
    assert f"rank {rk['rank']} of 4 by test accuracy" in page
    assert -1 <= rk["supernet_tau"] <= 1 and rk["supernet_nets"] == len(summary["nets"])
    assert all(0 <= n["supernet_accuracy"] <= 1 for n in summary["nets"])
    assert "supernet ranking" in page and "test accuracy" in page
    # the compare stage's rows, each runtime with how it ran and its output check
    rows = summary["peers"][0]["runtimes"]
    assert {r["runtime"] for r in rows} >= {"tvm", "pytorch", "onnxruntime"}
    assert all(r["setting"] and r["setting"] in page for r in rows)
    arch = json.loads((run / summary["arch"]["path"]).read_text())
    assert arch["ops"] == summary["arch"]["ops"] == searched["ops"]
    manifest = json.loads((run / summary["artifacts"]["manifest"]).read_text())
    assert manifest["measured_latency_us"] == searched["compile_measured_us"]
    # the compile stage timed the run's modules together, interleaved, as validate does after it
    assert f"interleaved with {len(summary['nets']) - 1} other module(s)" in manifest["measurement"]["how"]
    assert all(n["compile_measured_us"] > 0 for n in summary["nets"])
    # the validate stage timed every net of the run interleaved; the summary and the page show its figures
    for n in summary["nets"]:  # one key set for a timing: median, quartiles, stable, rounds
        t = n["measurement"]
        assert t["q1"] <= t["median"] <= t["q3"] and isinstance(t["stable"], bool) and t["rounds"] >= 1, n
    v = summary["validation"]["summary"]
    assert v["nets"] == len({tuple(n["ops"]) for n in summary["nets"]} | {tuple(summary["arch"]["ops"])})
    assert "Kendall τ" in page and f"{v['kendall_tau']:.2f}" in page
    kinds = {n["kind"] for n in summary["nets"]}
    assert {"searched", "reference", "fastest", "slowest", "matched"} <= kinds
    # one name for each net: the run's, in its summary, in compare's rows and in validate's rows
    names = [n["name"] for n in summary["nets"]]
    assert names[0] == "searched" and "reference (mbconv_k3_e6)" in names
    assert [p["net"] for p in summary["peers"]] == ["searched", "reference (mbconv_k3_e6)"]
    # validate loaded the compile stage's libraries (nothing compiled twice) and checked the run's own copy of the
    # table: whatever it fitted lies in the run folder, never beside the table in --logs-dir
    vdoc = json.loads((run / "validate" / "validate.json").read_text())
    assert all(r["build"] for r in vdoc["nets"]), [r["net"] for r in vdoc["nets"] if not r["build"]]
    assert sorted(n for r in vdoc["nets"] for n in (r["net"], *r.get("aliases", ()))) == sorted(names)
    from pathlib import Path

    assert Path(vdoc["table"]["path"]).resolve() == (run / state["done"]["profile"]["table"]).resolve()
    assert not [f.name for f in (logs / quick.stem).iterdir() if "calibration" in f.name or "correction" in f.name]

    # a deleted module is noticed on --resume: compile and every stage after it run again, the rest is kept
    module = run / summary["artifacts"]["module"]
    module.unlink()
    r = cli("run", "--resume", str(run), timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "missing since stage 'compile'" in " ".join(r.stdout.split()), r.stdout[-3000:]
    state = json.loads((run / "run.json").read_text())
    for s in ("profile", "search", "train", "baselines"):
        assert state["done"][s]["seconds"] == seconds[s]
    assert list(state["done"]) == list(STAGES) and module.is_file()
    manifest = json.loads((run / summary["artifacts"]["manifest"]).read_text())
    assert manifest["library"]["sha256"] == sha256_file(module)


def test_the_table_alone_when_asked(tmp_path):
    """--no-measure-budget: the searched net is the table's choice, fitted to the budget less the margin, no net
    is compiled in the search stage, and its random rivals are matched on the table's prediction."""
    quick = quick_target(tmp_path)
    logs = tmp_path / "logs"
    profile("tiny", str(quick), trials=0, logs_dir=logs)
    run = tmp_path / "run"
    r = cli("run", "--space", "tiny", "--target", str(quick), "--trials", "0", "--logs-dir", str(logs), "--out",
            str(run), "--epochs", "2", "--warmup-epochs", "1", "--train-epochs", "1", "--no-measure-budget",
            "--stop-after", "baselines", timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    state = json.loads((run / "run.json").read_text())
    assert state["config"]["measure_budget"] is False and state["done"]["search"]["measured_us"] is None
    arch = json.loads((run / state["done"]["search"]["arch"]).read_text())
    assert arch["derivation"]["measured"] is None and "by measurement" not in r.stdout
    assert arch["predicted_latency_us"] <= 0.97 * state["done"]["profile"]["budget_us"] + 1e-6
    # the rivals: within 5% of the searched net's predicted latency, or, where the space has fewer, the nearest
    space, table = load_space("tiny"), LatencyTable.load(run / state["done"]["profile"]["table"])
    nets = {tuple(canonical_ops(space, ops)) for ops in itertools.product(*(b.candidates for b in space.blocks()))}
    nets.discard(tuple(canonical_ops(space, arch["ops"])))  # never the searched net under another spelling
    matched = [n for n in state["done"]["baselines"]["nets"].values() if n["kind"] == "matched"]
    assert len(matched) == 3 and all(tuple(n["ops"]) in nets for n in matched)
    ref = arch["predicted_latency_us"]
    gaps = sorted(abs(table.predict(space, list(ops)) - ref) / ref for ops in nets)
    for n in matched:
        assert abs(n["predicted_us"] - ref) / ref <= max(0.05, gaps[2]) + 1e-9, (n, gaps[:3])
