"""Every reader of a file tvm-nas reads, fed damaged and hostile files: it returns a valid model or raises one line
of TvmNasError naming the file, never another exception; and each refusal, once, with a real file.

The valid files are the shipped `tiny` space and `host` target, and a latency table, calibration, correction and
architecture of the tiny space written here as validate and search write them (no TVM tuning or compiling).
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import re
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tvm_nas.arch import arch_document, load_architecture
from tvm_nas.errors import TvmNasError
from tvm_nas.profile.calibration import calibration_path
from tvm_nas.profile.correction import correction_path, fit_correction
from tvm_nas.profile.model import LatencyModel as LatencyTable  # the table and what validate fitted to it
from tvm_nas.space import load_space
from tvm_nas.targets import load_target

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "search_space" / "tiny.yaml"
HOST = ROOT / "targets" / "host.yaml"
FUZZ = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])


# -- valid documents -------------------------------------------------------------------------------------------
def table_doc(space) -> dict:
    """A latency table of `space` as `tvm-nas profile` writes one (figures made up, fields as measured)."""
    entries = {}
    for i, k in enumerate(space.unique_op_keys()):
        m = 4.0 + 3.0 * i
        entries[k.key] = {"op": k.op, "in_shape": [1, *k.in_shape], "out_channels": k.out_channels,
                          "stride": k.stride, "median": m, "q1": m - 0.1, "q3": m + 0.1, "mean": m, "std": 0.1,
                          "min": m - 0.2, "count": 15, "rounds": 3, "discarded_rounds": 0,
                          "round_medians": [m, m, m], "stable": True, "load": 1.0, "trials": 0, "tasks": ["t#1"],
                          "source": "measured", "measured_at": "local cpu:0, 1 threads"}
    ev = {"number": 5, "repeat": 5, "min_repeat_ms": 5}
    return {"schema": 1, "space": {"name": space.name, "hash": space.hash},
            "target": {"name": "host", "hash": "0123456789abcdef", "tvm": {"kind": "llvm", "mcpu": "x86-64"}},
            "tvm_version": "0.27.0", "evaluator": ev, "batch_size": 1, "dtype": "float32",
            "created": "2026-01-01T00:00:00+00:00",
            "settings": {"trials": 0, "seed": 0, "batch_size": 1, "dtype": "float32", "pipeline": "p",
                         "tvm_version": "0.27.0", "evaluator": ev, "threads": 1, "runner": "local"},
            "timing": {"lower_s": 1.0, "tune_s": 0.0, "tune_trials": 0, "tune_curve": [[1.0, 1, 20.0, 1]],
                       "tune_kernels": 0, "measure_s": 2.0},
            "dedup": {"ops": len(entries), "tasks": 12, "unique_tasks": 10},
            "invocation": {"median": 2.0, "q1": 1.9, "q3": 2.1, "std": 0.05, "stable": True, "count": 15},
            "updated": "2026-01-01T00:00:01+00:00", "units": "us", "entries": entries}


def all_nets(space) -> list[list[str]]:
    return [list(x) for x in itertools.product(*(b.candidates for b in space.blocks()))]


def fitted_extras(table, nets) -> dict:
    """What validate adds to a fit before writing it beside the table (`deploy/validate.py:_keep`)."""
    return {"leave_one_out": {"median_abs_error_pct": 1.0}, "table_hash": table.hash, "load_avg": [1.0, 1.0, 1.0],
            "fitted": "2026-01-01T00:00:00+0000", "unstable_nets": 0, "trained_on": nets}


def calibration_doc(table, nets) -> dict:
    return {"form": "affine", "scale": 1.02, "offset_us": 0.3, "nets": len(nets), "loo_median_abs_error_pct": 0.4,
            "loo_worst_abs_error_pct": 1.1, "additive_median_abs_error_pct": 0.6, "additive_worst_abs_error_pct": 1.7,
            "forms": {"affine": {"scale": 1.02, "offset_us": 0.3, "qualifies": True}}, "better": True,
            **fitted_extras(table, nets)}


def correction_doc(table, space, nets) -> dict:
    """A real XGBoost correction fitted on 12 nets whose largest candidate costs 12% more in the net."""
    big = space.blocks()[0].candidates[-1]
    pred = [table.predict(space, n, calibrated=False) for n in nets]
    meas = [p * (1 + 0.12 * n.count(big)) for p, n in zip(pred, nets, strict=True)]
    fit = fit_correction(nets, pred, meas, {"name": "table sum", "median_abs_error_pct": 50.0,
                                            "worst_abs_error_pct": 50.0})
    fit.pop("loo_us")
    return {**fit, **fitted_extras(table, nets)}


class Docs(dict):
    def __repr__(self) -> str:  # Hypothesis prints the arguments of a failing example: the mutation says it all
        return "<valid documents>"


@pytest.fixture(scope="module")
def valid(tmp_path_factory):
    """The valid documents every mutation starts from, and a folder holding a valid table."""
    space = load_space(TINY)
    folder = tmp_path_factory.mktemp("valid")
    path = folder / "tiny.latency.json"
    path.write_text(json.dumps(table_doc(space)))
    table = LatencyTable.load(path)
    nets = all_nets(space)[:12]
    ops = nets[5]
    return Docs({"space": space, "folder": folder, "table_path": path, "table": table_doc(space),
            "calibration": calibration_doc(table, nets), "correction": correction_doc(table, space, nets),
            "arch": arch_document(space, ops, [np.ones(len(b.candidates)) / len(b.candidates)
                                               for b in space.blocks()], table,
                                  derivation={"rule": "argmax", "argmax_ops": ops,
                                              "argmax_latency_us": table.predict(space, ops),
                                              "changed_blocks": [], "budget_us": 100.0, "budget_met": True,
                                              "budget_feasible": True, "fastest_latency_us": 20.0}),
            "space_yaml": yaml.safe_load(TINY.read_text()), "target_yaml": yaml.safe_load(HOST.read_text())})


def test_the_valid_documents_are_valid(valid, tmp_path):
    """What the fuzzing starts from loads, with its calibration and correction in use."""
    t = tmp_path / "tiny.latency.json"
    t.write_text(json.dumps(valid["table"]))
    calibration_path(t).write_text(json.dumps(valid["calibration"]))
    correction_path(t).write_text(json.dumps(valid["correction"]))
    table = LatencyTable.load(t, space=valid["space"])
    assert table.calibration["scale"] == 1.02 and table.correction is not None
    a = tmp_path / "a.arch.json"
    a.write_text(json.dumps(valid["arch"]))
    assert load_architecture(a).ops == valid["arch"]["ops"]


# -- mutations ---------------------------------------------------------------------------------------------------
def _deep(n: int):
    v: object = 1
    for _ in range(n):
        v = [v]
    return v


NASTY = [None, True, False, 0, -1, 1, 7.5, 2**63, 10**400, -1e308, 1e308, 1e-300, -0.0, math.nan, math.inf,
         -math.inf, "", "x", "1.5", "café", "../../etc/passwd", "a" * 5000, [], {}, [1, 2], {"a": 1}, [None],
         {"median": None}, _deep(60)]


def paths(doc, prefix=()) -> list[tuple]:
    """Every place in a document: keys of mappings, indices of lists."""
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:2]):  # the first two stand for the rest
            out += paths(v, (*prefix, i))
    return out


def _at(doc, path):
    for p in path:
        doc = doc[p]
    return doc


# the fields the product computes with, drawn as often as all the others together
FOCUS = {"calibration": ["scale", "offset_us", "table_hash", "trained_on", "nets"],
         "correction": ["booster", "features", "nets", "loo_median_abs_error_pct", "trained_on", "schema"],
         "table": ["invocation", "settings", "entries", "space", "target", "timing"]}


@st.composite
def mutated(draw, doc: dict, focus: str | None = None) -> dict:
    """`doc` with 1-3 values replaced by wrong types or absurd numbers, deleted, swapped or given an extra field."""
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, 3))):
        near = [(k,) for k in FOCUS.get(focus, []) if k in doc]
        where = draw(st.sampled_from(near if near and draw(st.booleans()) else paths(doc)))
        if not where:
            continue
        parent, key = _at(doc, where[:-1]), where[-1]
        how = draw(st.sampled_from(["nasty", "nasty", "nasty", "delete", "extra", "swap", "scale"]))
        if how == "nasty":
            parent[key] = copy.deepcopy(draw(st.sampled_from(NASTY)))
        elif how == "delete":
            parent.pop(key) if isinstance(parent, dict) else parent.pop(key)
        elif how == "extra" and isinstance(parent[key], dict):
            parent[key][draw(st.sampled_from(["extra", "", "0", "schema"]))] = draw(st.sampled_from(NASTY[:12]))
        elif how == "swap":  # a list for a mapping, a string for a number, ...
            v = parent[key]
            parent[key] = (list(v.values()) if isinstance(v, dict) else {str(i): x for i, x in enumerate(v)}
                           if isinstance(v, list) else str(v) if isinstance(v, (int, float)) else [v])
        elif how == "scale" and isinstance(parent[key], (int, float)) and not isinstance(parent[key], bool):
            parent[key] = parent[key] * draw(st.sampled_from([-1, 0, 1e-9, 1e9, 1e300]))
    return doc


def _dump(doc, kind: str) -> str:
    if kind == "yaml":
        return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    return json.dumps(doc)  # NaN and Infinity as Python writes them, as a damaged writer would


@st.composite
def damaged_bytes(draw, text: str) -> bytes:
    """The file's text as bytes, often left alone, else truncated, re-encoded, given a NUL or nested 100,000 deep."""
    how = draw(st.sampled_from(["as is", "as is", "as is", "truncate", "latin-1", "utf-16", "nul", "deep", "empty",
                                "garbage"]))
    data = text.encode()
    if how == "truncate":
        return data[:draw(st.integers(0, max(0, len(data) - 1)))]
    if how == "latin-1":
        return ("# é\n" + text if text.lstrip().startswith(("name", "#")) else text.replace('"', '"é', 1)
                ).encode("latin-1", errors="replace")
    if how == "utf-16":
        return text.encode("utf-16")
    if how == "nul":
        i = draw(st.integers(0, len(data)))
        return data[:i] + b"\x00" + data[i:]
    if how == "deep":
        return b"[" * 100_000 + b"]" * 100_000
    if how == "empty":
        return b""
    if how == "garbage":
        return draw(st.binary(max_size=200))
    return data


_seq = itertools.count()


def place(folder: Path, name: str, data: bytes, link: str | None, outside: Path) -> Path:
    """Write `data` as `folder/name`, or as a file outside `folder` that `folder/name` is a symlink to (or a symlink
    to /dev/zero, to a folder, to nothing)."""
    path = folder / name
    if link is None:
        path.write_bytes(data)
    elif link == "outside":
        target = outside / f"{next(_seq)}-{name}"
        target.write_bytes(data)
        path.symlink_to(target)
    else:
        path.symlink_to({"dev-zero": "/dev/zero", "folder": str(outside), "dangling": str(outside / "nope")}[link])
    return path


LINKS = st.sampled_from([None] * 6 + ["outside", "dev-zero", "folder", "dangling"])


def one_line_naming(e: TvmNasError, path: Path) -> None:
    msg = str(e)
    assert "\n" not in msg and msg.strip() == msg and str(path) in msg, msg


def _fresh(tmp_path_factory, kind: str) -> tuple[Path, Path]:
    base = tmp_path_factory.getbasetemp() / f"fuzz-{kind}-{next(_seq)}"
    (base / "in").mkdir(parents=True)
    (base / "out").mkdir()
    return base / "in", base / "out"


# -- the readers -------------------------------------------------------------------------------------------------
@FUZZ
@given(data=st.data())
def test_fuzz_space_yaml(valid, tmp_path_factory, data):
    doc = data.draw(mutated(valid["space_yaml"]))
    raw = data.draw(damaged_bytes(_dump(doc, "yaml")))
    folder, outside = _fresh(tmp_path_factory, "space")
    path = place(folder, "s.yaml", raw, data.draw(LINKS), outside)
    try:
        space = load_space(path)
    except TvmNasError as e:
        one_line_naming(e, path)
        return
    # a space that loads builds: every block, every op key, a hash, within the bounds
    assert space.hash and space.op_keys() and len(space.blocks()) <= 256
    assert all(max(k.in_shape[0], k.out_channels) <= 8192 for k in space.op_keys() if k.op != "classifier")


@FUZZ
@given(data=st.data())
def test_fuzz_target_yaml(valid, tmp_path_factory, data):
    doc = data.draw(mutated(valid["target_yaml"]))
    raw = data.draw(damaged_bytes(_dump(doc, "yaml")))
    folder, outside = _fresh(tmp_path_factory, "target")
    path = place(folder, "t.yaml", raw, data.draw(LINKS), outside)
    try:
        spec = load_target(path)
    except TvmNasError as e:
        one_line_naming(e, path)
        return
    assert spec.hash and spec.name


def _use(table: LatencyTable, space) -> None:
    """What the other commands do with a loaded table: every prediction is a finite positive latency."""
    for ops in all_nets(space)[:6]:
        for calibrated in (True, False):
            v = table.predict(space, ops, calibrated=calibrated)
            assert math.isfinite(v) and v > 0, v
    assert all(np.isfinite(v).all() and (v >= 0).all() for v in table.block_matrix(space))
    assert math.isfinite(table.invocation_us)
    table.meta.get("settings", {}).get("trials")  # validate and compile read these
    table.meta.get("invocation", {}).get("median")
    if table.calibration:
        assert {k: table.calibration[k] for k in ("scale", "offset_us", "nets", "loo_median_abs_error_pct")}
    if table.correction is not None:
        assert {k: table.correction[k] for k in ("model", "nets", "loo_median_abs_error_pct",
                                                 "loo_worst_abs_error_pct")}


@FUZZ
@given(data=st.data())
def test_fuzz_latency_table(valid, tmp_path_factory, data):
    doc = data.draw(mutated(valid["table"], "table"))
    raw = data.draw(damaged_bytes(_dump(doc, "json")))
    folder, outside = _fresh(tmp_path_factory, "table")
    path = place(folder, "tiny.latency.json", raw, data.draw(LINKS), outside)
    try:
        table = LatencyTable.load(path)
    except TvmNasError as e:
        one_line_naming(e, path)
        return
    try:
        _use(table, valid["space"])
    except TvmNasError as e:  # an op missing from the table: said in one line naming it
        one_line_naming(e, path)


@pytest.mark.parametrize("what", ["calibration", "correction"])
def test_fuzz_fitted_models(valid, tmp_path_factory, what):
    """A damaged calibration or correction never fails the table: it is used when valid, else refused."""
    where = calibration_path if what == "calibration" else correction_path

    @settings(FUZZ, max_examples=120)  # a table load each: cheap, and the absurd numbers are few among the fields
    @given(data=st.data())
    def run(data):
        doc = data.draw(mutated(valid[what], what))
        raw = data.draw(damaged_bytes(_dump(doc, "json")))
        folder, outside = _fresh(tmp_path_factory, what)
        t = folder / "tiny.latency.json"
        t.write_text(json.dumps(valid["table"]))
        place(folder, where(t).name, raw, data.draw(LINKS), outside)
        table = LatencyTable.load(t)
        _use(table, valid["space"])

    run()


@FUZZ
@given(data=st.data())
def test_fuzz_arch_file(valid, tmp_path_factory, data):
    doc = data.draw(mutated(valid["arch"]))
    raw = data.draw(damaged_bytes(_dump(doc, "json")))
    folder, outside = _fresh(tmp_path_factory, "arch")
    path = place(folder, "a.arch.json", raw, data.draw(LINKS), outside)
    try:
        loaded = load_architecture(path)
        space, ops, out = loaded.space, loaded.ops, loaded.doc
    except TvmNasError as e:
        one_line_naming(e, path)
        return
    assert len(ops) == len(space.blocks()) and space.hash == out["space"]["hash"]
    p = out.get("predicted_latency_us")
    assert p is None or (math.isfinite(p) and p > 0)


# -- each refusal, once, with a real file --------------------------------------------------------------------------
def _write(path: Path, doc) -> Path:
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


@pytest.mark.parametrize("reader", ["table", "arch", "calibration-beside-table"])
@pytest.mark.parametrize("nest", ["[", '{"a":'])
def test_json_nested_100000_deep_is_one_line(valid, tmp_path, capsys, reader, nest):
    deep = nest * 100_000 + ("]" if nest == "[" else "}") * 100_000
    if reader == "table":
        path = _write(tmp_path / "tiny.latency.json", deep)
        with pytest.raises(TvmNasError, match="nested deeper than 32 levels") as e:
            LatencyTable.load(path)
        one_line_naming(e.value, path)
    elif reader == "arch":
        path = _write(tmp_path / "a.arch.json", deep)
        with pytest.raises(TvmNasError, match="nested deeper than 32 levels") as e:
            load_architecture(path)
        one_line_naming(e.value, path)
    else:  # a damaged calibration is refused in one line; the table predicts its plain sum
        t = _write(tmp_path / "tiny.latency.json", valid["table"])
        _write(calibration_path(t), deep)
        assert LatencyTable.load(t).calibration is None
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and str(calibration_path(t)) in err and "nested deeper" in err, err
        assert "plain table sum" in err


@pytest.mark.parametrize("edit,field", [
    (lambda d: d.update(invocation=None), "field 'invocation'"),
    (lambda d: d.update(settings=5), "field 'settings'"),
    (lambda d: d.update(settings={**d["settings"], "trials": "64"}), "field 'settings.trials'"),
    (lambda d: d["timing"].update(tune_s="3"), "field 'timing.tune_s'"),
    (lambda d: d["space"].pop("hash"), "field 'space.hash'"),
    (lambda d: d.update(settngs={}), "field 'settngs'"),  # a typo, or another tool's file
    (lambda d: next(iter(d["entries"].values())).update(q1=float("nan")), "field 'entries.stem_conv_k3|"),
    (lambda d: next(iter(d["entries"].values())).update(std=10**400), "field 'std'"),
    (lambda d: d["invocation"].update(median=-1.0), "field 'invocation.median'"),
])
def test_table_field_of_the_wrong_type_is_refused_where_read(valid, tmp_path, edit, field):
    doc = copy.deepcopy(valid["table"])
    edit(doc)
    path = _write(tmp_path / "tiny.latency.json", doc)
    with pytest.raises(TvmNasError, match=re.escape(field)) as e:
        LatencyTable.load(path)
    one_line_naming(e.value, path)


def test_table_with_a_null_invocation_is_refused_by_the_command(valid, tmp_path):
    """It loaded, and the next command that asked for the call's cost died with an AttributeError."""
    from conftest import cli

    host = load_target(HOST)
    doc = copy.deepcopy(valid["table"])
    doc["target"]["hash"], doc["invocation"] = host.hash, None
    path = _write((tmp_path / "logs" / "host").mkdir(parents=True) or tmp_path / "logs" / "host" /
                  "tiny.latency.json", doc)
    r = cli("search", "--space", "tiny", "--target", "host", "--logs-dir", str(tmp_path / "logs"), "--latency-ms",
            "1", "--out", str(tmp_path / "run"), "--quiet")
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "field 'invocation'" in lines[0], r.stderr
    assert not (tmp_path / "run").exists()


def _table_with(tmp_path, valid, calibration=None, correction=None) -> Path:
    t = _write(tmp_path / "tiny.latency.json", valid["table"])
    if calibration is not None:
        _write(calibration_path(t), calibration)
    if correction is not None:
        _write(correction_path(t), correction)
    return t


def _refused(capsys, path: Path, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(path) in err, err
    for n in needles:
        assert n in err, err
    return err


@pytest.mark.parametrize("field,value", [("scale", -1.0), ("scale", 0), ("scale", math.nan), ("scale", math.inf),
                                         ("scale", 1e300), ("scale", "1.0"), ("scale", True), ("offset_us", math.nan),
                                         ("offset_us", -math.inf), ("offset_us", 1e300), ("offset_us", None)])
def test_absurd_calibration_is_refused_and_the_plain_table_used(valid, tmp_path, capsys, field, value):
    space = valid["space"]
    t = _table_with(tmp_path, valid, {**valid["calibration"], field: value})
    table = LatencyTable.load(t)
    assert table.calibration is None
    _refused(capsys, calibration_path(t), f"field '{field}'", "plain table sum")
    ops = all_nets(space)[3]
    assert table.predict(space, ops) == table.predict(space, ops, calibrated=False)


def test_calibration_that_predicts_a_negative_net_is_refused_there(valid, tmp_path, capsys):
    """Within its bounds, an offset of -1 s still makes every net of this table negative: refused on first use."""
    space = valid["space"]
    t = _table_with(tmp_path, valid, {**valid["calibration"], "scale": 1.0, "offset_us": -1e6})
    table = LatencyTable.load(t)
    assert table.calibration is not None  # in bounds: nothing said yet
    assert capsys.readouterr().err == ""
    ops = all_nets(space)[3]
    doc = arch_document(space, ops, None, table)
    assert doc["predicted_latency_us"] == table.predict(space, ops, calibrated=False) > 0
    assert table.calibration is None
    _refused(capsys, calibration_path(t), "offset_us -1e+06", "plain table sum")


@pytest.mark.parametrize("edit,needle", [
    (lambda d: d.pop("loo_median_abs_error_pct"), "field 'loo_median_abs_error_pct': Field required"),
    (lambda d: d.pop("nets"), "field 'nets'"),
    (lambda d: d.update(loo_worst_abs_error_pct=math.nan), "field 'loo_worst_abs_error_pct'"),
    (lambda d: d.update(features=["n_blocks"]), "field 'features'"),
    (lambda d: d.update(booster="[" * 100_000 + "]" * 100_000), "field 'booster'"),
    (lambda d: d.update(booster='{"learner": {}}'), "field 'booster': XGBoost cannot use it"),
    (lambda d: d.update(model="xgboost-ratio-v2"), "field 'model'"),
])
def test_damaged_correction_is_refused_and_the_calibration_used(valid, tmp_path, capsys, edit, needle):
    space = valid["space"]
    doc = copy.deepcopy(valid["correction"])
    edit(doc)
    t = _table_with(tmp_path, valid, valid["calibration"], doc)
    table = LatencyTable.load(t)
    assert table.correction is None and table.calibration["scale"] == 1.02
    _refused(capsys, correction_path(t), needle, "predictions use the calibration")
    ops = all_nets(space)[3]
    plain = table.predict(space, ops, calibrated=False)
    assert table.predict(space, ops) == pytest.approx(1.02 * plain + 0.3)


def test_correction_that_predicts_a_negative_latency_is_refused_where_used(valid, tmp_path, capsys):
    """A booster that is positive at the loader's probe (table sum 1 µs) and negative for this space's nets."""
    import xgboost as xgb

    space = valid["space"]
    x = np.array([[1.0], [2.0], [3.0], [40.0], [50.0], [60.0]])
    model = xgb.XGBRegressor(n_estimators=20, max_depth=2, learning_rate=0.5).fit(x, [1, 1, 1, -1, -1, -1])
    doc = {**valid["correction"], "form": "sum", "features": ["table_sum_us"],
           "booster": model.get_booster().save_raw(raw_format="json").decode()}
    t = _table_with(tmp_path, valid, correction=doc)
    table = LatencyTable.load(t)
    assert table.correction is not None and capsys.readouterr().err == ""
    ops = all_nets(space)[3]
    plain = table.predict(space, ops, calibrated=False)
    assert table.correction.predict(ops, plain) < 0  # what it would have written
    arch = arch_document(space, ops, None, table)
    assert arch["predicted_latency_us"] == plain and table.correction is None
    _refused(capsys, correction_path(t), "not a latency", "plain table sum")


# -- YAML: spaces and targets ------------------------------------------------------------------------------------
BOMB = """name: bomb
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
i: [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


def _space_yaml(tmp_path, text: str) -> Path:
    return _write(tmp_path / "s.yaml", text)


def _tiny_with(**fields) -> str:
    return yaml.safe_dump({**yaml.safe_load(TINY.read_text()), **fields}, sort_keys=False)


@pytest.mark.parametrize("loader", [load_space, load_target])
def test_yaml_alias_bomb_is_refused_at_once(tmp_path, loader):
    path = _space_yaml(tmp_path, BOMB)
    t0 = time.perf_counter()
    with pytest.raises(TvmNasError, match=r"line 3: alias \*a is not accepted") as e:
        loader(path)
    assert time.perf_counter() - t0 < 1.0
    one_line_naming(e.value, path)


@pytest.mark.parametrize("text,match", [
    (TINY.read_text() + "stages: []\n", r"line \d+: key 'stages' is given twice \(first at line 9\)"),
    (TINY.read_text().replace("input: {resolution: 16, channels: 3}", "input: {resolution: 16, resolution: 32}"),
     "key 'resolution' is given twice"),
    (_tiny_with(stages=[{"out": 16, "blocks": 1, "stride": 1} for _ in range(2001)]),
     "field 'stages': List should have at most 64 items"),
    (_tiny_with(stages=[{"out": 16, "blocks": 64, "stride": 1} for _ in range(5)]),
     "field 'stages': 320 searchable blocks in all; a space has at most 256"),
    (TINY.read_text().replace("width_mult: 1.0", "width_mult: .inf"), "field 'width_mult': Input should be a finite"),
    (TINY.read_text().replace("width_mult: 1.0", "width_mult: .nan"), "field 'width_mult'"),
    (TINY.read_text().replace("width_mult: 1.0", "width_mult: 1.0e+300"), "field 'width_mult'"),
    # each count is under 8192 as written; the multiplier makes the head 16384 wide
    (_tiny_with(width_mult=4.0, head={"out": 4096}), "field 'head': out 4096 × width_mult 4 builds 16384 channels"),
    (_tiny_with(width_mult=17.0), "field 'width_mult': Input should be less than or equal to 16"),
    (TINY.read_text().replace("stem: {out: 8, stride: 1}", "stem: {out: 8, stride: '1'}"), "field 'stem.stride'"),
    (_tiny_with(candidates=["mbconv_k99_e3"]), "field 'candidates'"),
    (_tiny_with(name="n" * 300), "field 'name'"),
])
def test_space_yaml_refusals(tmp_path, text, match):
    path = _space_yaml(tmp_path, text)
    with pytest.raises(TvmNasError, match=match) as e:
        load_space(path)
    one_line_naming(e.value, path)


def test_width_mult_is_applied_before_the_channel_limit(tmp_path):
    """A multiplier within bounds builds what it says, and the limit holds for what is built."""
    space = load_space(_space_yaml(tmp_path, _tiny_with(width_mult=2.0)))
    assert [b.out_channels for b in space.blocks()] == [32, 32, 32]
    ok = load_space(_space_yaml(tmp_path, _tiny_with(width_mult=2.0, head={"out": 4096})))
    assert ok.fixed_layers()[2].out_channels == 8192


@pytest.mark.parametrize("text,match", [
    (HOST.read_text() + "threads: 2\n", "key 'threads' is given twice"),
    (HOST.read_text().replace("threads: 1", "threads: .inf"), "field 'threads'"),
    (HOST.read_text().replace("threads: 1", "threads: '1'"), "field 'threads'"),
    (HOST.read_text().replace("number: 10", "number: 1000000000000"), "field 'evaluator.number'"),
    (HOST.read_text().replace("tvm: {kind: llvm, mcpu: auto}", "tvm: {kind: llvm, mcpu: [auto]}"), "field 'tvm'"),
])
def test_target_yaml_refusals(tmp_path, text, match):
    path = _space_yaml(tmp_path, text)
    with pytest.raises(TvmNasError, match=match) as e:
        load_target(path)
    one_line_naming(e.value, path)


def test_the_command_refuses_an_alias_bomb_in_one_line(tmp_path):
    from conftest import cli

    path = _space_yaml(tmp_path, BOMB)
    r = cli("profile", "--space", str(path), "--target", "host", "--logs-dir", str(tmp_path / "logs"), timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "alias" in lines[0], r.stderr


# -- architecture files ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("edit,field", [
    (lambda d: d.update(probabilites=d["probabilities"]), "field 'probabilites': Extra inputs"),
    (lambda d: d.update(predicted_latency_us=-5.0), "field 'predicted_latency_us'"),
    (lambda d: d.update(predicted_latency_us="25"), "field 'predicted_latency_us'"),
    (lambda d: d["probabilities"][0].update({"zero": math.nan}), "field 'probabilities.0.zero'"),
    (lambda d: d["derivation"].update(budget_us=math.inf), "field 'derivation.budget_us'"),
    (lambda d: d["space"]["definition"].update(width_mult=math.inf), "field 'space.definition.width_mult'"),
    (lambda d: d.update(ops=d["ops"] * 200), "field 'ops'"),
])
def test_arch_file_refusals(valid, tmp_path, edit, field):
    doc = copy.deepcopy(valid["arch"])
    edit(doc)
    path = _write(tmp_path / "a.arch.json", doc)
    with pytest.raises(TvmNasError, match=re.escape(field)) as e:
        load_architecture(path)
    one_line_naming(e.value, path)
