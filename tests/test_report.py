"""The run report: a realistic `summary.json` in, a static page with valid figures and the same numbers out."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest

from tvm_nas.console import fmt_pct, fmt_us
from tvm_nas.errors import TvmNasError
from tvm_nas.report import render_report, terminal_summary, write_summary
from tvm_nas.space import load_space

FIGURES = ("architecture.png", "latency_table.png", "accuracy_latency.png", "predicted_measured.png", "peers.png")


def _timing(median: float | None, spread: float | None = None) -> dict | None:
    """A net's timing as the summary records it (median, quartiles, stable, rounds)."""
    if median is None:
        return None
    q = (None, None) if spread is None else (median - spread, median + spread)
    return {"median": median, "q1": q[0], "q3": q[1], "stable": True, "rounds": 3}


def make_summary(space_name: str = "tiny") -> dict:
    """A summary.json as `tvm-nas run` writes it, with made-up but consistent numbers."""
    space = load_space(space_name)
    blocks = space.blocks()

    def lat(b, op: str) -> float:
        if op == "zero":
            return 0.0
        k, e = (int(v) for v in re.fullmatch(r"mbconv_k(\d+)_e(\d+)", op).groups())
        return round(b.in_channels * b.in_hw * b.in_hw * e * k / 300 / b.stride + 7.25 * (b.index + 1), 1)

    table = [[lat(b, op) for op in b.candidates] for b in blocks]
    pick = ["mbconv_k5_e3", "zero", "mbconv_k3_e3"] if space_name == "tiny" else [
        b.candidates[(b.index * 5) % len(b.candidates)] for b in blocks]
    probs = [{op: (0.55 if op == pick[i] else 0.45 / (len(b.candidates) - 1)) for op in b.candidates}
             for i, b in enumerate(blocks)]
    fixed_us = 46.1
    chosen = (row[b.candidates.index(op)] for row, b, op in zip(table, blocks, pick, strict=True))
    predicted = round(fixed_us + sum(chosen), 1)
    ref_ops = ["mbconv_k3_e6"] * len(blocks)
    return {
        "schema": 1,
        "space": {"name": space.name, "hash": space.hash, "input": [space.input.channels, space.input.resolution,
                                                                    space.input.resolution],
                  "num_classes": space.num_classes,
                  "blocks": [{"index": b.index, "in_channels": b.in_channels, "out_channels": b.out_channels,
                              "stride": b.stride, "in_hw": b.in_hw, "candidates": list(b.candidates)} for b in blocks],
                  "fixed": [{"op": f.op, "in_shape": list(f.in_shape), "out_channels": f.out_channels,
                             "stride": f.stride} for f in space.fixed_layers()]},
        "target": {"name": "host", "tvm": {"kind": "llvm", "target": "llvm -mcpu=znver3"}},
        "budget_us": 300.0,
        "arch": {"ops": pick, "probabilities": probs, "predicted_us": predicted, "path": "search/final.arch.json"},
        "latency_table": {"path": f"table/{space.name}.latency.json", "blocks": table, "fixed_us": fixed_us},
        "nets": [
            {"name": "searched", "kind": "searched", "ops": pick, "accuracy": 0.8125, "predicted_us": predicted,
             "measurement": _timing(171.34)},
            {"name": "reference (mbconv_k3_e6)", "kind": "reference", "ops": ref_ops, "accuracy": 0.843,
             "predicted_us": 420.0, "measurement": _timing(455.0)},
            {"name": "fastest", "kind": "fastest", "ops": ["mbconv_k3_e3"] * len(blocks), "accuracy": 0.702,
             "predicted_us": 120.5, "measurement": _timing(131.2)},
            {"name": "slowest", "kind": "slowest", "ops": ref_ops, "accuracy": 0.851, "predicted_us": 480.25,
             "measurement": _timing(502.9)},
            {"name": "random-1", "kind": "random", "ops": pick, "accuracy": 0.77, "predicted_us": 250.0,
             "measurement": _timing(None)},
            {"name": "random-2", "kind": "random", "ops": pick, "accuracy": 0.79, "predicted_us": 280.4,
             "measurement": _timing(None)},
        ],
        "peers": [
            {"net": "searched", "tvm_us": 171.34, "tvm_untuned_us": 900.0, "pytorch_us": 400.0,
             "onnxruntime_us": 150.06},
            {"net": "reference (mbconv_k3_e6)", "tvm_us": 455.0, "pytorch_us": 812.3, "onnxruntime_us": 390.7},
        ],
        "stages": [{"name": "profile", "seconds": 62.0, "status": "done"},
                   {"name": "search", "seconds": 140.5, "status": "done"},
                   {"name": "train", "seconds": 33.3, "status": "done"},
                   {"name": "compile", "seconds": 20.0, "status": "done"},
                   {"name": "compare", "seconds": 9.9, "status": "done"}],
        "artifacts": {"latency table": f"table/{space.name}.latency.json", "architecture": "search/final.arch.json",
                      "weights": "train/final.pt", "onnx": "build/host/model.onnx", "module": "build/host/model.so",
                      "manifest": "build/host/manifest.json", "report": "report/index.html"},
    }


def write_run(tmp_path: Path, summary: dict) -> Path:
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    write_summary(run, summary)  # the writer `tvm-nas run` uses, through the same model the report reads
    for rel in (summary.get("artifacts") or {}).values():
        if rel != "report/index.html":
            (run / rel).parent.mkdir(parents=True, exist_ok=True)
            (run / rel).write_bytes(b"x")
    return run


def images(page: Path) -> list[Path]:
    srcs = re.findall(r'<img[^>]*\ssrc="([^"]+)"', page.read_text())
    for src in srcs:
        p = page.parent / src
        assert p.is_file(), f"{src} referenced but missing"
        head = p.read_bytes()[:200]
        assert head.startswith(b"\x89PNG\r\n\x1a\n") or b"<svg" in head, f"{src} is neither PNG nor SVG"
    return [page.parent / s for s in srcs]


def text(page: Path) -> str:
    """The page's visible text, tags removed, entities kept as written (numbers and % do not need escaping)."""
    return re.sub(r"<[^>]+>", " ", page.read_text())


def test_full_report(tmp_path):
    summary = make_summary()
    run = write_run(tmp_path, summary)
    page = render_report(run)
    assert page == run / "report" / "index.html" and page.is_file()
    imgs = images(page)
    assert sorted(p.name for p in imgs) == sorted(FIGURES)
    body = text(page)
    assert "not drawn" not in body and "failed" not in body
    searched = summary["nets"][0]
    assert "171.3" in body and fmt_us(searched["measurement"]["median"]) == "171.3"
    assert fmt_pct(searched["accuracy"]) == "81.2%" and "81.2%" in body
    assert fmt_us(summary["arch"]["predicted_us"]) in body
    for net in summary["nets"]:
        assert fmt_pct(net["accuracy"]) in body and fmt_us(net["predicted_us"]) in body
        if net["measurement"] is not None:
            assert fmt_us(net["measurement"]["median"]) in body
    for peer in summary["peers"]:
        for key in ("tvm_us", "tvm_untuned_us", "pytorch_us", "onnxruntime_us"):
            if key in peer:
                assert fmt_us(peer[key]) in body
    assert "150.1" in body and "2.33x" in body  # ORT 150.06 and PyTorch/TVM 400 / 171.34
    for row in summary["latency_table"]["blocks"]:  # the chosen ops' latencies are in the architecture table
        assert any(fmt_us(v) in body for v in row)
    for stage in summary["stages"]:
        assert stage["name"] in body
    html = page.read_text()
    for rel in summary["artifacts"].values():  # links relative to report/, opened without a server
        target = "index.html" if rel == "report/index.html" else "../" + rel
        assert f'href="{target}"' in html
    assert "(missing)" not in html
    assert not list((run / "report").glob(".*.tmp"))


def test_a_summary_of_the_flat_timing_keys_still_renders(tmp_path):
    """summary.json written before a timing had its own fields (measured_us, measured_q1, _q3, stable) reads back."""
    from tvm_nas.report.summary import load_summary

    summary = make_summary()
    for n in summary["nets"]:
        t = n.pop("measurement")
        if t is not None:
            n.update(measured_us=t["median"], measured_q1=t["median"] - 1, measured_q3=t["median"] + 1, stable=False)
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text(__import__("json").dumps(summary))
    s = load_summary(run)
    t = s.nets[0].measurement
    assert t.median == 171.34 and t.q1 == 170.34 and not t.stable
    assert s.nets[4].measurement is None
    assert "171.3 (IQR 170.3–172.3) UNSTABLE" in text(render_report(run))


def test_a_summary_whose_timing_was_named_measured_still_renders(tmp_path):
    """summary.json written when a net's timing object was ``measured`` (now ``measurement``, as in every file)."""
    from tvm_nas.report.summary import load_summary

    summary = make_summary()
    for n in summary["nets"]:
        n["measured"] = n.pop("measurement")
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text(__import__("json").dumps(summary))
    s = load_summary(run)
    assert s.nets[0].measurement.median == 171.34 and s.nets[4].measurement is None
    assert "171.3" in text(render_report(run))


def test_tiny_numbers_format():
    from tvm_nas.console import fmt_timing

    assert fmt_us(171.34) == "171.3" and fmt_us(None) == "n/a" and fmt_us(float("nan")) == "n/a"
    assert fmt_us(171.34, "µs") == "171.3 µs" and fmt_us(-2.05, sign=True) == "-2.0" and fmt_us(None, "µs") == "n/a"
    assert fmt_timing(171.34, 170.0, 172.5, True, unit="µs") == "171.3 µs (IQR 170.0–172.5)"
    assert fmt_timing(171.34, stable=False) == "171.3 UNSTABLE" and fmt_timing(None) == "n/a"
    assert fmt_pct(0.81) == "81.0%" and fmt_pct(None) == "n/a"


@pytest.mark.parametrize("drop", ["peers", "measured", "untuned", "arch", "table", "accuracy", "nets", "bare", "nulls"])
def test_missing_optional_pieces_still_render(tmp_path, drop):
    summary = make_summary()
    if drop == "peers":
        summary["peers"] = []
    elif drop == "measured":
        for net in summary["nets"]:
            net["measurement"] = None
    elif drop == "untuned":
        for peer in summary["peers"]:
            peer.pop("tvm_untuned_us", None)
    elif drop == "arch":
        summary["arch"] = None
    elif drop == "table":
        del summary["latency_table"]
    elif drop == "accuracy":
        for net in summary["nets"]:
            net["accuracy"] = None
    elif drop == "nets":
        summary["nets"] = None
    elif drop == "bare":
        summary = {"schema": 1}
    elif drop == "nulls":  # what `tvm-nas run` writes when the search kept no probabilities and a block failed
        summary["arch"]["probabilities"] = None
        summary["target"]["tvm"] = None
        summary["artifacts"] = None
        summary["latency_table"]["blocks"][0][1] = float("nan")
        summary["latency_table"]["blocks"][1][0] = None
        summary["latency_table"]["fixed_us"] = None
    run = write_run(tmp_path, summary)
    page = render_report(run)
    imgs = images(page)
    body = text(page)
    assert "failed" not in body
    if drop in ("peers", "measured", "accuracy", "nets", "bare", "arch", "table"):
        assert "not drawn" in body and "n/a" in body
    if drop == "untuned":
        assert "n/a" in body and "900.0" not in body and "peers.png" in {p.name for p in imgs}
    if drop == "nulls":
        assert len(imgs) == len(FIGURES) and "not drawn" not in body
    if drop == "measured":
        assert {p.name for p in imgs} >= {"architecture.png", "accuracy_latency.png"}
        assert "predicted_measured.png" not in {p.name for p in imgs}


def test_rerender_removes_stale_figures(tmp_path):
    summary = make_summary()
    run = write_run(tmp_path, summary)
    render_report(run)
    assert (run / "report" / "peers.png").is_file()
    summary["peers"] = []
    write_summary(run, summary)
    render_report(run)
    assert not (run / "report" / "peers.png").exists()


def test_large_space_renders(tmp_path):
    summary = make_summary("proxyless-imagenet")
    run = write_run(tmp_path, summary)
    page = render_report(run)
    assert len(images(page)) == len(FIGURES)
    assert "not drawn" not in text(page)


@pytest.mark.parametrize("content, match", [(None, "not found"), ("{", "corrupted"), ('{"schema": 7}', "schema 7"),
                                            ('{"schema": 1, "budget_us": "fast"}', "budget_us")])
def test_bad_summary_is_a_one_line_error(tmp_path, content, match):
    if content is not None:
        (tmp_path / "summary.json").write_text(content)
    with pytest.raises(TvmNasError, match=match):
        render_report(tmp_path)


def test_terminal_summary_names_every_artifact(tmp_path):
    from rich.console import Console

    summary = make_summary()
    run = write_run(tmp_path, copy.deepcopy(summary))
    render_report(run)
    console = Console(width=200, record=True, color_system=None)
    console.print(terminal_summary(run))
    out = console.export_text()
    for name, rel in summary["artifacts"].items():
        assert name in out and rel in out
    assert "171.3" in out and "81.2%" in out and "missing" not in out


def test_over_budget_is_marked(tmp_path):
    from rich.console import Console

    summary = make_summary()
    summary["arch"].update(budget_met=False, budget_feasible=False)
    run = write_run(tmp_path, summary)
    render_report(run)
    assert "over budget: no net of the space meets it" in text(run / "report" / "index.html")
    console = Console(width=300, record=True, color_system=None)
    console.print(terminal_summary(run))
    assert "over budget: no net of the space meets it" in " ".join(console.export_text().split())  # wrapped
    summary["arch"].update(budget_met=True, budget_feasible=True)
    (tmp_path / "ok").mkdir()
    run = write_run(tmp_path / "ok", summary)
    render_report(run)
    assert "over budget" not in text(run / "report" / "index.html")


def test_validation_with_a_learned_correction_renders(tmp_path):
    summary = make_summary()
    measured = [n for n in summary["nets"] if n["measurement"] is not None]
    for i, n in enumerate(measured):
        n.update(calibrated_us=round(1.05 * n["predicted_us"], 1),
                 corrected_us=round(n["measurement"]["median"] + i, 1))
    loo = {"median_abs_error_pct": 1.9, "worst_abs_error_pct": 4.8, "within_5pct": 1.0, "within_10pct": 1.0,
           "kendall_tau": 0.93}
    summary["validation"] = {"summary": {
        "nets": len(measured), "median_abs_error_pct": 4.2, "worst_abs_error_pct": 10.8, "within_5pct": 0.57,
        "within_10pct": 0.91, "kendall_tau": 0.93, "spearman_rho": 0.99, "load_avg": [1.0], "unstable": [],
        "calibration": {"scale": 1.064, "offset_us": 0.0, "better": True,
                        "leave_one_out": {**loo, "median_abs_error_pct": 2.1, "worst_abs_error_pct": 5.4}},
        "correction": {"better": True, "baseline": {"name": "calibration"}, "leave_one_out": loo}},
        "result": "validate/validate.json", "figure": "validate/validate.png"}
    page = render_report(write_run(tmp_path, summary))
    body = text(page)
    assert "learned correction: measured ≈" in body and "1.9% / 4.8%" in body and "2.1% / 5.4%" in body
    assert (page.parent / "predicted_measured.png").is_file()
    summary["validation"]["summary"]["correction"].update(better=False, not_used="3 net(s) unstable")
    body = text(render_report(write_run(tmp_path, summary)))
    assert "not used: 3 net(s) unstable" in body


def test_accuracy_labels_ranking_and_measured_over_budget(tmp_path):
    """The page says which set each accuracy comes from, ranks only on a test set, and says in one line when the
    measured latency is over budget beyond the protocol's spread."""
    from rich.console import Console

    from tvm_nas.report import terminal_summary

    summary = make_summary()
    for n in summary["nets"]:  # no held-out test set: validation accuracies, labelled, no rank
        n["accuracy_set"] = "validation"
    summary["ranking"] = {"accuracy_set": "validation", "matched": 3, "rank": None, "supernet_tau": 0.12,
                          "supernet_nets": 7}
    (tmp_path / "v").mkdir()
    body = text(render_report(write_run(tmp_path / "v", summary)))
    assert "81.2% (validation split)" in body and "not ranked: no held-out test set" in body
    assert "accuracy (validation split, not held out)" in body and "barely ranks" in body
    assert "OVER BUDGET" not in body
    # a test set: ranked; and a searched net measured over budget (its lower quartile above it)
    for n in summary["nets"]:
        n["accuracy_set"] = "test"
    summary["ranking"] = {"accuracy_set": "test", "matched": 3, "rank": 2, "supernet_tau": 0.6, "supernet_nets": 7}
    searched = summary["nets"][0]
    searched["measurement"] = _timing(searched["measurement"]["median"], 2)
    summary["budget_us"] = searched["measurement"]["q1"] - 1.0
    (tmp_path / "t").mkdir()
    run = write_run(tmp_path / "t", summary)
    body = text(render_report(run))
    assert "81.2% (test)" in body and "rank 2 of 4 by test accuracy" in body and "barely ranks" not in body
    assert "MEASURED OVER BUDGET" in body
    console = Console(record=True, width=400)
    console.print(terminal_summary(run))
    out = console.export_text()
    assert "MEASURED OVER BUDGET" in out and "rank 2 of 4 among random nets of its latency" in out


def test_ground_truth_front_is_read_checked_and_drawn(tmp_path, capsys):
    """A space's ground truth (every net trained alone and timed) is read through its schema, its front is the
    nets no faster net beats, and the report draws it beside the run's nets."""
    import itertools
    import json

    from tvm_nas.errors import TvmNasError
    from tvm_nas.groundtruth import load_groundtruth

    space = load_space("tiny")
    nets = [{"ops": list(ops), "test_accuracy": 0.5 + 0.01 * (i % 7), "seeds": 1, "measured_us": 20.0 + i}
            for i, ops in enumerate(itertools.product(*(b.candidates for b in space.blocks())))]
    doc = {"schema": 1, "space": "tiny", "space_hash": space.hash, "target": "host", "recipe": {"epochs": 10},
           "data": "generated", "nets": nets}
    path = tmp_path / "tiny.groundtruth.json"
    path.write_text(json.dumps(doc))
    gt = load_groundtruth(path, space)
    front = gt.front()
    assert [n.test_accuracy for n in front] == [0.5 + 0.01 * k for k in range(7)]  # fastest first, each better
    assert all(f.measured_us < g.measured_us for f, g in itertools.pairwise(front))
    # another version of the space: ignored with a warning; a damaged field: one line naming it
    path.write_text(json.dumps({**doc, "space_hash": "0" * 16}))
    assert load_groundtruth(path, space) is None and "another version" in capsys.readouterr().err
    path.write_text(json.dumps({**doc, "nets": [{**nets[0], "measured_us": -1}]}))
    with pytest.raises(TvmNasError, match=r"field 'nets\.0\.measured_us'"):
        load_groundtruth(path, space)
    assert load_groundtruth(tmp_path / "none.json", space) is None

    summary = make_summary()
    summary["ground_truth"] = {"data": "generated", "recipe": {"epochs": 10},
                               "nets": [{**n, "front": tuple(n["ops"]) in {tuple(f.ops) for f in front}}
                                        for n in nets]}
    page = render_report(write_run(tmp_path, summary))
    drawn = (page.parent / "accuracy_latency.png").read_bytes()
    assert drawn.startswith(b"\x89PNG") and "not drawn" not in text(page)
    (tmp_path / "plain").mkdir()
    plain = render_report(write_run(tmp_path / "plain", make_summary()))
    assert (plain.parent / "accuracy_latency.png").read_bytes() != drawn  # the front and the 36 nets are on it
