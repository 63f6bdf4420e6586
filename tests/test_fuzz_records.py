"""The records tvm-nas writes for itself and reads back later (`tvm_nas/records/`): a run's `run.json`, a build's
`manifest.json`, a validation's `validate.json`, a search checkpoint, the tuning time ledger and a tuning database's
`target.json`, fed damaged and hostile files. Each reader returns a valid record (that what reads it next can use)
or raises one line of TvmNasError naming the file, never another exception; each refusal once through the real
command line.

The valid records are written by the product's own writers where that is cheap (a compiled net's manifest by
`deploy/compile.py:_manifest`, a validation's fits by `LatencyModel.learn`, a checkpoint by a real two-epoch search,
the ledger by `TimeLedger.save`) and otherwise with exactly the fields `run.py` records (no TVM compilation, no
training of nets).
"""

from __future__ import annotations

import copy
import io
import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console
from test_fuzz_readers import (
    FUZZ,
    HOST,
    LINKS,
    NASTY,
    _at,
    _dump,
    _fresh,
    all_nets,
    calibration_doc,
    damaged_bytes,
    mutated,
    one_line_naming,
    place,
    table_doc,
)

from tvm_nas.arch import arch_document, reference_ops, write_arch
from tvm_nas.backend.budget import TimeLedger
from tvm_nas.config import RunConfig
from tvm_nas.errors import TvmNasError
from tvm_nas.io import sha256_file
from tvm_nas.profile.calibration import calibration_path
from tvm_nas.profile.model import LatencyModel, statistics
from tvm_nas.records import load_manifest, load_validation
from tvm_nas.space import load_space
from tvm_nas.stages import BY_NAME, STAGES, load_run_state
from tvm_nas.targets import load_target
from tvm_nas.timing import Protocol, Timing

# a record is read in milliseconds, and a damaged_bytes draw leaves it parseable 3 times in 10: more examples than
# test_fuzz_readers' 40, so that the fields the product computes with are each hit several times
RECORDS = settings(FUZZ, max_examples=150)
RUN_CONFIG = {"space": "tiny", "target": "host", "trials": 0, "epochs": 2, "warmup_epochs": 1, "train_epochs": 1}


class Docs(dict):
    def __repr__(self) -> str:  # Hypothesis prints a failing example's arguments: the mutation says it all
        return "<valid records>"


def _quiet(_msg: str) -> None:
    pass


def _timing(m: float) -> Timing:
    return Timing(m, 0.98 * m, 1.03 * m, m, 0.02 * m, 0.95 * m, 15, 5, "local cpu:0, 1 threads", 3, True,
                  [m, 1.01 * m, m], 1.0, 0)


# -- valid records ----------------------------------------------------------------------------------------------
def validation_doc(folder: Path, space) -> dict:
    """`validate.json` as `tvm-nas validate` assembles it: 24 nets timed (figures made up: the table misses 10%, and
    12% more per block of the largest op), the real statistics, the real check of the calibration in use on nets it
    was not fitted on, and the real fits of a calibration and a correction (written beside a table in `folder`)."""
    t = folder / "tiny.latency.json"
    t.write_text(json.dumps(table_doc(space)))
    nets = all_nets(space)
    calibration_path(t).write_text(json.dumps(calibration_doc(LatencyModel.load(t), nets[:12])))
    model = LatencyModel.load(t)
    big = space.blocks()[0].candidates[-1]
    rows = []
    for i, ops in enumerate(nets[12:36]):
        p = model.predict(space, ops, calibrated=False)
        m = p * (1.1 + 0.12 * ops.count(big)) + 3 + 0.2 * (i % 3)
        t_ = _timing(m)
        rows.append({"net": f"random-{i}", "ops": ops, "predicted_us": p, "untuned_kernels": 0,
                     "max_abs_err": 1e-7, "build": None, "measured_us": t_.median,
                     "error_pct": 100 * (p - m) / m,
                     "measurement": t_.to_json()})
    summary = statistics([r["predicted_us"] for r in rows], [r["measured_us"] for r in rows])
    summary["unstable"] = []
    summary["load_avg"] = [1.0, 0.8, 0.5]
    summary["in_use"] = model.in_use(space, rows, _quiet)
    summary.update(model.learn(rows, summary, _quiet))
    assert summary["in_use"] and summary["calibration"]["better"] and summary["correction"] is not None
    return {"schema": 1, "space": {"name": space.name, "hash": space.hash},
            "target": {"name": "host", "hash": "0123456789abcdef", "threads": 1},
            "table": {"path": str(t), "hash": model.hash, "trials": 0, "invocation_us": 2.0},
            "protocol": Protocol().to_json(), "where": "local cpu:0, 1 threads", "compile_seconds": 12.5,
            "summary": summary, "nets": rows, "figure": "validate.png"}


class _Target:
    """What `_manifest` reads of a `tvm.target.Target` (so that no TVM is imported here)."""

    kind = SimpleNamespace(name="llvm")
    attrs = {"mtriple": "x86_64-linux-gnu"}

    def __str__(self) -> str:
        return json.dumps({"kind": "llvm", "tag": "", "keys": ["cpu"], "num-cores": 2, "mcpu": "x86-64"})


def manifest_doc(folder: Path, space, table: LatencyModel, timed: bool = True) -> dict:
    """A build's manifest as `compile_arch` writes it (`_manifest`, the real writer), of a built net whose library
    is a stand-in file, predicted by `table` and timed (or not) as `time_builds` records it."""
    from tvm_nas.arch import load_architecture
    from tvm_nas.deploy.compile import TaskReport, _manifest

    ops = all_nets(space)[5]
    a = load_architecture(write_arch(folder / "a.arch.json", arch_document(space, ops, None, table)))
    lib = folder / "model.so"
    lib.write_bytes(b"\x7fELF stand-in")
    x, y = np.zeros((1, 3, 16, 16), np.float32), np.zeros((1, 10), np.float32)
    onnx = {"file": "model.onnx", "sha256": "0" * 64, "opset": 20, "max_abs_err": 3e-8}
    tasks = TaskReport(total=3, reused=["a#1"], tuned=[], untuned=["b#2", "c#3"])
    predicted = table.predict(space, ops)
    t = _timing(1.2 * predicted) if timed else None
    how = "time_evaluator on local cpu:0 ..." if timed else "not measured: --no-measure"
    checked = {"status": "passed", "how": "tvm.runtime.load_module on this machine", "max_abs_err": 2e-8}
    return _manifest(a, load_target(HOST), _Target(), None, 0, "torch", x, y, lib, onnx, tasks, table, predicted,
                     None if t is None else t.to_json(), how, checked, 3.25, "0.27.0", 0, False,
                     folder / "logs")


def _stage_results(space, table: LatencyModel, validation: dict) -> dict:
    """Each stage's result as `run.py` records it, for the files `run_folder` writes."""
    from tvm_nas.deploy.compare import _row
    from tvm_nas.deploy.peers import Result
    from tvm_nas.stages import accuracies as _accuracies

    fast, slow = table.extremes(space)
    lo, hi = table.predict(space, fast), table.predict(space, slow)
    ops = all_nets(space)[5]
    acc = _accuracies({"val_accuracy": 0.61, "test_accuracy": 0.58})
    nets = {}
    for name, kind, net_ops in (("reference (mbconv_k3_e6)", "reference", reference_ops(space)),
                                ("fastest", "fastest", fast), ("matched-1", "matched", all_nets(space)[7])):
        slug = name.split(" ")[0]
        nets[name] = {"kind": kind, "ops": net_ops, "arch": f"baselines/{slug}.arch.json", **acc,
                      "weights": f"baselines/{slug}/model.pt", "predicted_us": table.predict(space, net_ops)}
    timed = Result("tvm", "TVM 0.27.0, default schedules (no database), 1 thread", _timing(80.0), 2e-8)
    peer = Result("pytorch", "PyTorch 2.9 eager, 1 thread", _timing(120.0), 1e-7)
    label = SimpleNamespace(label="searched")
    spec = SimpleNamespace(name="host")
    rows = [_row(label, spec, timed, 70.0, timed.timing.to_json(), 80.0, "alternate", ["tvm", "pytorch"]),
            _row(label, spec, peer, None, peer.timing.to_json(), 80.0, "alternate", ["tvm", "pytorch"])]
    return {
        "profile": {"table": "table/tiny.latency.json", "fastest_us": lo, "slowest_us": hi, "budget_us": (lo + hi) / 2,
                    "fastest_ops": fast, "slowest_ops": slow},
        "search": {"arch": "search/final.arch.json", "predicted_us": table.predict(space, ops), "ops": ops},
        "train": {"weights": "train/model.pt", **acc},
        "baselines": {"nets": nets, "supernet": {"tau": 0.3333, "nets": 4, "accuracy_set": "test",
                                                 "shared_accuracy": {"searched": 0.41, **{k: 0.4 for k in nets}}}},
        "compile": {"measured_us": {"searched": 80.0, **{k: 90.0 for k in nets}},
                    "manifest": "build/host/manifest.json", "module": "build/host/model.so",
                    "onnx": "build/host/model.onnx"},
        "compare": {"rows": rows},
        "validate": {"result": "validate/validate.json", "summary": validation["summary"]},
        "report": {"page": "report/index.html"},
    }


def run_folder(root: Path, valid: Docs, through: str = "report") -> Path:
    """A run folder as `tvm-nas run` leaves it once stage `through` is done: `run.json` (each stage's result with its
    seconds and the sha256 of the files it wrote, as `run.py` records them) and the files the next stage reads (the
    table, the architectures, the searched net's weights and manifest, `validate.json`); no library: nothing that
    reads this folder here loads one."""
    from tvm_nas.network import Network

    space = valid["space"]
    table_doc_ = copy.deepcopy(valid["table"])
    table_doc_["target"]["hash"] = load_target(HOST).hash
    (root / "table").mkdir(parents=True)
    (root / "table" / "tiny.latency.json").write_text(json.dumps(table_doc_))
    table = LatencyModel.load(root / "table" / "tiny.latency.json", space=space)
    results = _stage_results(space, table, valid["validation"])
    ops = results["search"]["ops"]
    write_arch(root / "search" / "final.arch.json", arch_document(space, ops, None, table))
    (root / "train").mkdir()
    torch.save(Network(space, ops).state_dict(), root / "train" / "model.pt")
    for n in results["baselines"]["nets"].values():
        write_arch(root / n["arch"], arch_document(space, n["ops"], None, table))
    (root / "build" / "host").mkdir(parents=True)
    (root / "build" / "host" / "manifest.json").write_text(json.dumps(valid["manifest"]))
    (root / "validate").mkdir()
    (root / "validate" / "validate.json").write_text(json.dumps(valid["validation"]))
    done = {}
    for stage in STAGES[:STAGES.index(through) + 1]:
        r = {"seconds": 1.5, **results[stage]}
        r["artifacts"] = {rel: sha256_file(root / rel) for rel in BY_NAME[stage].outputs(r) if (root / rel).is_file()}
        done[stage] = r
    cfg = RunConfig(**RUN_CONFIG, logs_dir=str(root / "logs")).model_dump(mode="json")
    (root / "run.json").write_text(json.dumps({"schema": 1, "config": cfg, "done": done, "created": "20260101-000000"},
                                              indent=2))
    return root


@pytest.fixture(scope="module")
def valid(tmp_path_factory):
    space = load_space("tiny")
    folder = tmp_path_factory.mktemp("records")
    t = folder / "tiny.latency.json"
    t.write_text(json.dumps(table_doc(space)))
    docs = Docs(space=space, table=table_doc(space))
    docs["validation"] = json.loads(json.dumps(validation_doc(tmp_path_factory.mktemp("validation"), space)))
    docs["manifest"] = json.loads(json.dumps(manifest_doc(folder, space, LatencyModel.load(t))))
    docs["manifest_untimed"] = json.loads(json.dumps(manifest_doc(folder, space, LatencyModel.load(t), False)))
    docs["run"] = json.loads(run_folder(folder / "run", docs).joinpath("run.json").read_text())
    ledger = TimeLedger(folder / "ledger", ["a", "b"])
    ledger.base = 45.0
    ledger.save()
    TimeLedger(folder / "ledger", ["c"]).save()
    docs["ledger"] = json.loads((folder / "ledger" / TimeLedger.FILE).read_text())
    docs["stamp"] = {"name": "rpi4b", "tvm": json.dumps({"kind": "llvm", "mtriple": "aarch64-linux-gnu",
                                                         "mcpu": "cortex-a72"})}
    return docs


def test_the_valid_records_are_valid(valid, tmp_path):
    """What the fuzzing starts from is read back whole, by the readers the product uses."""
    for name, doc, reader in (("validate.json", valid["validation"], load_validation),
                              ("manifest.json", valid["manifest"], load_manifest),
                              ("m2.json", valid["manifest_untimed"], load_manifest),
                              ("run.json", valid["run"], load_run_state)):
        p = tmp_path / name
        p.write_text(json.dumps(doc))
        assert reader(p) == doc
    assert list(valid["run"]["done"]) == list(STAGES)
    assert valid["validation"]["summary"]["correction"] is not None
    (tmp_path / TimeLedger.FILE).write_text(json.dumps(valid["ledger"]))
    assert TimeLedger(tmp_path, ["b", "a"]).base == 45.0 and len(valid["ledger"]) == 2


# -- mutations ---------------------------------------------------------------------------------------------------
# the fields the product computes with, each drawn as often as all the others together
FOCUS = {
    "run": [("config",), ("config", "space"), ("config", "latency_ms"), ("done",), ("done", "profile", "table"),
            ("done", "profile", "budget_us"), ("done", "profile", "fastest_ops"), ("done", "search", "arch"),
            ("done", "search", "predicted_us"), ("done", "train", "accuracy_set"), ("done", "baselines", "nets"),
            ("done", "baselines", "supernet"), ("done", "compile", "measured_us"), ("done", "compare", "rows"),
            ("done", "validate", "summary"), ("done", "validate", "result"), ("done", "report"),
            ("done", "profile", "artifacts"), ("done", "profile", "seconds"), ("baselines_partial",)],
    "manifest": [("library", "file"), ("measurement", "median"), ("measurement", "q1"), ("measurement", "stable"),
                 ("measured_latency_us",), ("predicted_latency_us",), ("latency_table",),
                 ("latency_table", "calibration"), ("latency_table", "correction"), ("tuning", "untuned"),
                 ("tuning",), ("verification",), ("verification", "status"), ("architecture", "budget_us"),
                 ("target", "name"), ("frontend",), ("tvm_version",), ("measured_over_predicted",)],
    "validation": [("nets",), ("nets", 0, "ops"), ("nets", 0, "measured_us"), ("nets", 0, "measurement", "q1"),
                   ("nets", 0, "measurement", "stable"), ("nets", 0, "calibrated_us"), ("nets", 0, "corrected_us"),
                   ("summary",),
                   ("summary", "calibration"), ("summary", "calibration", "better"), ("summary", "correction"),
                   ("summary", "kendall_tau"), ("summary", "load_avg"), ("summary", "in_use")],
    "checkpoint": [("format",), ("epoch",), ("config",), ("history",), ("history", 0), ("history", 0, "epoch"),
                   ("history", 1, "val_accuracy"), ("baseline",), ("param_groups", 0, "lr"), ("param_groups",),
                   ("weight_sched", "last_epoch"), ("weight_sched", "base_lrs")],
    "stamp": [("tvm",), ("name",)],
}


@st.composite
def damaged(draw, doc: dict, focus: str) -> dict:
    """`doc` mutated (test_fuzz_readers.mutated: wrong types, absurd numbers, deleted, swapped, extra fields), and
    half the time one of the fields the product computes with given a nasty value."""
    try:
        doc = draw(mutated(doc))
    except OverflowError:  # mutated's "scale" of an integer of 400 digits by 1e300: no float holds it
        doc = copy.deepcopy(doc)
    if FOCUS.get(focus) and draw(st.booleans()):
        where = draw(st.sampled_from(FOCUS[focus]))
        try:
            parent = _at(doc, where[:-1])
        except (KeyError, IndexError, TypeError):
            return doc
        key = where[-1]
        if isinstance(parent, dict) or isinstance(parent, list) and isinstance(key, int) and key < len(parent):
            parent[key] = copy.deepcopy(draw(st.sampled_from(NASTY)))
    return doc


def _file(data, doc: dict, focus: str, tmp_path_factory, name: str) -> tuple[Path, Path]:
    """The damaged document written as `name` in a fresh folder (or linked there); returns (folder, path)."""
    raw = data.draw(damaged_bytes(_dump(data.draw(damaged(doc, focus)), "json")))
    folder, outside = _fresh(tmp_path_factory, focus)
    return folder, place(folder, name, raw, data.draw(LINKS), outside)


# -- the readers -------------------------------------------------------------------------------------------------
@RECORDS
@given(data=st.data())
def test_fuzz_run_json(valid, tmp_path_factory, data):
    """`run --resume` reads run.json, builds its Run and checks each stage's files: one line, or a usable state."""
    from tvm_nas.run import Run, _peers
    from tvm_nas.stages import accuracies as _accuracies

    folder, path = _file(data, valid["run"], "run", tmp_path_factory, "run.json")
    try:
        state = load_run_state(path)
    except TvmNasError as e:
        one_line_naming(e, path)
        return
    d = copy.deepcopy(state["done"])
    assert set(d) == set(STAGES[:len(d)])
    for stage, result in d.items():  # what the run and its report read of each finished stage
        assert all(not Path(f).is_absolute() and ".." not in Path(f).parts for f in BY_NAME[stage].outputs(result))
    _peers(d.get("compare", {}).get("rows", []))
    for n in [d.get("train", {}), *d.get("baselines", {}).get("nets", {}).values()]:
        _accuracies(n)
    for k in ("fastest_us", "slowest_us", "budget_us"):
        v = d.get("profile", {}).get(k, 1.0)
        assert math.isfinite(v) and v > 0
    try:
        run = Run(folder, state, Console(file=io.StringIO()))
    except TvmNasError as e:  # the config names a space or target that does not load: said by that file
        assert "\n" not in str(e), str(e)
        return
    run._check_artifacts()  # the files are missing here: the first stage that wrote one is redone, and after it
    kept = run.state["done"]
    assert set(kept) == set(STAGES[:len(kept)])
    assert load_run_state(folder / "run.json")["done"] == kept  # what it saved reads back


@RECORDS
@given(data=st.data())
def test_fuzz_manifest(valid, tmp_path_factory, data):
    """compile (time_builds), compare and validate read a build's manifest.json: one line, or what they use works."""
    from tvm_nas.backend.trust import inside
    from tvm_nas.deploy.compare import _row, _tvm_setting
    from tvm_nas.deploy.compile import _summary
    from tvm_nas.deploy.peers import Result
    from tvm_nas.deploy.validate import _untuned_in

    doc = valid["manifest"] if data.draw(st.booleans()) else valid["manifest_untimed"]
    folder, path = _file(data, doc, "manifest", tmp_path_factory, "manifest.json")
    try:
        m = load_manifest(path)
    except TvmNasError as e:
        one_line_naming(e, path)
        return
    assert "\n" not in _summary(m)  # compile and time_builds print it
    assert _untuned_in(SimpleNamespace(build_dir=folder)) >= 0  # validate, for a finished build
    t = m.get("measurement") or {}
    row = _row(SimpleNamespace(label="a"), SimpleNamespace(name="host"), Result("tvm", _tvm_setting(m)),
               m.get("predicted_latency_us"), t if "median" in t else None, m.get("measured_latency_us"))
    assert row["measured_us"] is None or (math.isfinite(row["measured_us"]) and row["measured_us"] > 0)
    try:
        inside(folder, m["library"]["file"], f"{path}: field 'library.file'")
    except TvmNasError as e:
        one_line_naming(e, path)


@RECORDS
@given(data=st.data())
def test_fuzz_validate_json(valid, tmp_path_factory, data):
    """The run's report stage reads validate.json for its nets' figures: one line, or finite positive latencies."""
    from tvm_nas.run import Run

    folder, path = _file(data, valid["validation"], "validation", tmp_path_factory, "validate.json")
    fake = SimpleNamespace(done={"validate": {"result": path.name}}, dir=folder)
    try:
        nets = Run._validated(fake)  # the reader's own call site in run.py
    except TvmNasError as e:
        one_line_naming(e, path)
        return
    for r in nets.values():  # by the run's name of each net: one timing, its summary fields
        t = r["measurement"]
        assert all(math.isfinite(t[k]) and t[k] >= 0 for k in ("median", "q1", "q3"))
        assert t["median"] > 0 and isinstance(t["stable"], bool)
        assert all(r.get(k) is None or math.isfinite(r[k]) for k in ("calibrated_us", "corrected_us"))


def test_fuzz_time_ledger(valid, tmp_path_factory, capsys):
    """A damaged time ledger never stops tuning: it is said in one line naming it, and the budget starts again."""

    @settings(FUZZ, max_examples=60)
    @given(data=st.data())
    def run(data):
        folder, path = _file(data, valid["ledger"], "ledger", tmp_path_factory, TimeLedger.FILE)
        capsys.readouterr()
        ledger = TimeLedger(folder, ["a", "b"])
        err = capsys.readouterr().err.strip()
        assert math.isfinite(ledger.base) and ledger.base >= 0 and ledger.left(60) <= 60
        if err:
            assert "\n" not in err and str(path) in err and "the time budget starts again" in err, err
            assert ledger.base == 0
        ledger.save()  # and the next round's save writes a ledger that reads back
        assert TimeLedger(folder, ["a", "b"]).base >= ledger.base

    run()


def test_fuzz_target_stamp(valid, tmp_path_factory):
    """open_database reads target.json first: a damaged one, or another target's, is one line naming it."""
    from tvm_nas.backend import tuning

    spec = load_target(HOST)

    @settings(FUZZ, max_examples=40)
    @given(data=st.data())
    def run(data):
        folder, path = _file(data, valid["stamp"], "stamp", tmp_path_factory, "target.json")
        try:
            db = tuning.open_database(folder, spec, create=False)
        except TvmNasError as e:
            one_line_naming(e, path)
            return
        assert db is None and not path.is_file()  # only a stamp that is not a file is no stamp at all

    run()


# -- checkpoints -------------------------------------------------------------------------------------------------
def _search(folder: Path, valid, epochs: int = 3):
    from tvm_nas.data import load_data
    from tvm_nas.search import ProxylessSearch, SearchConfig

    space = valid["space"]
    t = folder / "tiny.latency.json"
    if not t.is_file():
        t.write_text(json.dumps(valid["table"]))
    data = load_data("builtin", space, max_samples=64, seed=0)
    config = SearchConfig(latency_budget_us=60.0, epochs=epochs, warmup_epochs=1, batch_size=16, max_samples=64)
    return ProxylessSearch(space, LatencyModel.load(t, space=space), data, config, folder / "run")


@pytest.fixture(scope="module")
def search_run(valid, tmp_path_factory):
    """A real search of the tiny space stopped after 2 of its 3 epochs: its folder (config.json, checkpoint)."""
    folder = tmp_path_factory.mktemp("search")
    torch.set_num_threads(1)
    _search(folder, valid).fit(stop_after=2)
    return folder


def _plain(state: dict) -> dict:
    """The checkpoint's fields other than tensors, as JSON-able data to mutate."""
    return {"format": state["format"], "epoch": state["epoch"], "config": json.loads(state["config"]),
            "history": json.loads(state["history"]), "baseline": state["baseline"], "scaler": state["scaler"],
            "weight_sched": dict(state["weight_sched"]),
            "param_groups": [{k: v for k, v in g.items()} for g in state["weight_opt"]["param_groups"]]}


def _rebuild(state: dict, plain: dict) -> dict:
    """`state` with its plain fields replaced by `plain`'s (a field deleted there is deleted)."""
    out = {k: v for k, v in state.items() if k not in ("format", "epoch", "config", "history", "baseline",
                                                        "scaler", "weight_sched")}
    for k in ("format", "epoch", "baseline", "scaler", "weight_sched"):
        if k in plain:
            out[k] = plain[k]
    for k in ("config", "history"):  # JSON strings as written; anything else as found
        if k in plain:
            out[k] = json.dumps(plain[k]) if isinstance(plain[k], (dict, list)) else plain[k]
    if "param_groups" in plain:
        out["weight_opt"] = {**state["weight_opt"], "param_groups": plain["param_groups"]}
    return out


@st.composite
def damaged_tensors(draw, state: dict) -> dict:
    """Sometimes a tensor part replaced: a state dict by a nasty value, a weight by one of another shape or NaN."""
    how = draw(st.sampled_from(["none", "none", "none", "part", "shape", "nan", "drop"]))
    state = dict(state)
    if how == "part":
        state[draw(st.sampled_from(["supernet", "weight_opt", "arch_opt", "weight_sched", "scaler"]))] = \
            copy.deepcopy(draw(st.sampled_from(NASTY[:28])))
    elif how in ("shape", "nan", "drop"):
        net = dict(state["supernet"])
        key = draw(st.sampled_from(sorted(k for k, v in net.items() if v.is_floating_point())))
        if how == "drop":
            net.pop(key)
        else:
            net[key] = torch.zeros(3, 1) if how == "shape" else torch.full_like(net[key], math.nan)
        state["supernet"] = net
    return state


@st.composite
def damaged_binary(draw, data: bytes) -> bytes:
    how = draw(st.sampled_from(["as is"] * 6 + ["truncate", "garbage", "empty"]))
    if how == "truncate":
        return data[:draw(st.integers(0, len(data) - 1))]
    if how == "garbage":
        return draw(st.binary(max_size=200))
    return b"" if how == "empty" else data


def test_fuzz_checkpoint(valid, search_run, tmp_path_factory):
    """A resumed search reads its checkpoint: one line naming it, or a state the next epoch can run from."""
    state = torch.load(search_run / "run" / "checkpoint.pt", weights_only=True)
    plain = _plain(state)
    torch.set_num_threads(1)
    s = _search(search_run, valid)

    @settings(FUZZ, max_examples=60)
    @given(data=st.data())
    def run(data):
        doc = _rebuild(state, data.draw(damaged(plain, "checkpoint")))
        doc = data.draw(damaged_tensors(doc))
        buf = io.BytesIO()
        torch.save(doc, buf)
        raw = data.draw(damaged_binary(buf.getvalue()))
        folder, outside = _fresh(tmp_path_factory, "checkpoint")
        path = place(folder, "checkpoint.pt", raw, data.draw(LINKS), outside)
        s.setup()  # a fresh supernet and optimizers, as a resumed search starts from
        try:
            s._load_checkpoint(path)
        except TvmNasError as e:
            one_line_naming(e, path)
            return
        assert 0 <= s.epoch_ <= s.config.epochs and len(s.history_) == s.epoch_
        assert all(0 <= r["val_accuracy"] <= 1 for r in s.history_)
        assert s.baseline_ is None or math.isfinite(s.baseline_)
        assert all(bool(torch.isfinite(p).all()) for p in s.supernet_.parameters())
        assert all(math.isfinite(g["lr"]) for g in s.weight_opt_.param_groups)

    run()


# -- each refusal once, through the real command line ----------------------------------------------------------
def _one_line(r, path: Path, *needles: str) -> None:
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_run_resume_refuses_a_damaged_run_json_in_one_line(valid, tmp_path):
    """A broken run.json structure gave a traceback on resume: here the compare stage met a list where the baselines
    are named (AttributeError), far from the file."""
    from conftest import cli

    run = run_folder(tmp_path / "run", valid, through="compile")
    state = json.loads((run / "run.json").read_text())
    state["done"]["baselines"]["nets"] = list(state["done"]["baselines"]["nets"].values())
    (run / "run.json").write_text(json.dumps(state))
    before = (run / "run.json").read_bytes()
    r = cli("run", "--resume", str(run), timeout=300)
    _one_line(r, run / "run.json", "field 'done.baselines.nets': Input should be a valid dictionary")
    assert (run / "run.json").read_bytes() == before  # refused as it was, not rewritten


def test_run_resume_refuses_a_damaged_manifest_in_one_line(valid, tmp_path):
    """The compare stage reads the compile stage's manifest: a manifest without its library gave a TypeError."""
    from conftest import cli

    run = run_folder(tmp_path / "run", valid, through="compile")
    # as whoever shares the folder could: the manifest edited and the compile stage's digest of it updated
    manifest = run / "build" / "host" / "manifest.json"
    m = json.loads(manifest.read_text())
    m["library"] = None
    manifest.write_text(json.dumps(m))
    state = json.loads((run / "run.json").read_text())
    state["done"]["compile"]["artifacts"]["build/host/manifest.json"] = sha256_file(manifest)
    (run / "run.json").write_text(json.dumps(state))
    r = cli("run", "--resume", str(run), timeout=300)
    _one_line(r, manifest, "field 'library': Input should be a valid dictionary")


def test_run_report_refuses_a_damaged_validate_json_in_one_line(valid, tmp_path):
    """The report stage reads validate.json for its nets' figures: a row without its measurement was shown as
    missing, exit 0; now it is refused there."""
    from conftest import cli

    run = run_folder(tmp_path / "run", valid, through="validate")
    result = run / "validate" / "validate.json"
    doc = json.loads(result.read_text())
    doc["nets"][3]["measured_us"] = None
    result.write_text(json.dumps(doc))
    state = json.loads((run / "run.json").read_text())
    state["done"]["validate"]["artifacts"] = {"validate/validate.json": sha256_file(result)}
    (run / "run.json").write_text(json.dumps(state))
    r = cli("run", "--resume", str(run), timeout=300)
    _one_line(r, result, "field 'nets.3.measured_us'")
    assert not (run / "summary.json").exists()


def test_search_resume_refuses_a_damaged_checkpoint_in_one_line(valid, search_run, tmp_path):
    """A checkpoint whose history lost a record resumed, and the search died later with a KeyError."""
    from conftest import cli

    run = shutil.copytree(search_run / "run", tmp_path / "run")
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    state["history"] = json.dumps(json.loads(state["history"])[:1])
    torch.save(state, run / "checkpoint.pt")
    r = cli("search", "--resume", "--out", str(run), "--quiet", timeout=300)
    _one_line(r, run / "checkpoint.pt", "field 'history': 1 epoch records for 2 epochs done")


# -- each refusal names its field -------------------------------------------------------------------------------
def _refused(reader, path: Path, field: str) -> None:
    with pytest.raises(TvmNasError) as e:
        reader(path)
    one_line_naming(e.value, path)
    assert field in str(e.value), str(e.value)


@pytest.mark.parametrize("edit,field", [
    (lambda d: d.update(schema=2), "field 'schema': schema 2 is not supported"),
    (lambda d: d["config"].update(trials="64"), "field 'config.trials'"),
    (lambda d: d["config"].update(epochs=0), "field 'config.epochs'"),
    (lambda d: d["done"].update(trian={}), "field 'done.trian': Extra inputs"),
    (lambda d: d["done"].pop("search"), "field 'done': stage 'train' is recorded as done but stage 'search'"),
    (lambda d: d["done"]["profile"].update(budget_us=math.nan), "field 'done.profile.budget_us'"),
    (lambda d: d["done"]["profile"].update(table="../../etc/passwd"), "field 'done.profile.table': "
                                                                      "'../../etc/passwd' is not a path inside"),
    (lambda d: d["done"]["search"]["artifacts"].update({"/etc/passwd": "0" * 64}), "field 'done.search.artifacts"),
    (lambda d: d["done"]["search"].pop("ops"), "field 'done.search.ops': Field required"),
    (lambda d: d["done"]["train"].update(accuracy_set="train"), "field 'done.train.accuracy_set'"),
    (lambda d: d["done"]["compile"]["measured_us"].update(searched=-1.0), "field 'done.compile.measured_us.searched'"),
    (lambda d: d["done"]["compare"].update(rows=[None]), "field 'done.compare.rows.0'"),
    (lambda d: d["done"]["validate"]["summary"].update(calibration={"scale": 1.0}),
     "field 'done.validate.summary.calibration.better'"),
])
def test_run_json_refusals(valid, tmp_path, edit, field):
    doc = copy.deepcopy(valid["run"])
    edit(doc)
    path = tmp_path / "run.json"
    path.write_text(json.dumps(doc))
    _refused(load_run_state, path, field)


def test_run_json_naming_a_space_no_file_system_takes_is_one_line(valid, tmp_path):
    """A config that names a space of 5,000 characters: the file name was too long for open(), an OSError."""
    from tvm_nas.run import Run

    doc = copy.deepcopy(valid["run"])
    doc["config"]["space"] = "a" * 5000
    (tmp_path / "run.json").write_text(json.dumps(doc))
    state = load_run_state(tmp_path / "run.json")
    with pytest.raises(TvmNasError, match="search_space 'a+…': not a name or a path this machine can open") as e:
        Run(tmp_path, state, Console(file=io.StringIO()))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("edit,field", [
    (lambda d: d.update(library=None), "field 'library'"),
    (lambda d: d["measurement"].update(median=-80.0), "field 'measurement.median'"),
    (lambda d: d["measurement"].pop("q1"), "field 'measurement': Value error, a measurement with a median has"),
    (lambda d: d.update(measured_latency_us=math.inf), "field 'measured_latency_us'"),
    (lambda d: d.update(predicted_latency_us="70"), "field 'predicted_latency_us'"),
    (lambda d: d["latency_table"]["calibration"].update(scale="1.0"), "field 'latency_table.calibration.scale'"),
    (lambda d: d["tuning"].update(untuned=-1), "field 'tuning.untuned'"),
    (lambda d: d.update(weights={}), "field 'weights'"),
    (lambda d: d.update(frontend="tensorflow"), "field 'frontend'"),
    (lambda d: d.update(measured_latency=1.0), "field 'measured_latency': Extra inputs"),
])
def test_manifest_refusals(valid, tmp_path, edit, field):
    doc = copy.deepcopy(valid["manifest"])
    doc["latency_table"]["calibration"] = {"scale": 1.02, "offset_us": 0.3, "nets": 12,
                                           "loo_median_abs_error_pct": 0.4}
    edit(doc)
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(doc))
    _refused(load_manifest, path, field.replace("Value error, ", ""))


def test_untimed_manifest_with_a_measured_latency_is_refused(valid, tmp_path):
    doc = {**valid["manifest_untimed"], "measured_latency_us": 50.0}
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(doc))
    _refused(load_manifest, path, "field 'measurement': no median, and 'measured_latency_us' is given")


@pytest.mark.parametrize("edit,field", [
    (lambda d: d["nets"][3].update(measured_us=None), "field 'nets.3.measured_us'"),
    (lambda d: d["nets"][0]["measurement"].update(stable=1), "field 'nets.0.measurement.stable'"),
    (lambda d: d["nets"][0].update(ops=None), "field 'nets.0.ops'"),
    (lambda d: d["nets"][0].update(calibrated_us=math.inf), "field 'nets.0.calibrated_us'"),
    (lambda d: d["summary"]["calibration"].update(better="yes"), "field 'summary.calibration.better'"),
    (lambda d: d["summary"].update(kendall_tau=7.0), "field 'summary.kendall_tau': Value error, 7.0 is not a rank"),
    (lambda d: d.update(summary=None), "field 'summary'"),
    (lambda d: d.update(nets={}), "field 'nets'"),
])
def test_validate_json_refusals(valid, tmp_path, edit, field):
    doc = copy.deepcopy(valid["validation"])
    edit(doc)
    path = tmp_path / "validate.json"
    path.write_text(json.dumps(doc))
    _refused(load_validation, path, field.replace("Value error, ", ""))


def test_validate_json_of_one_net_keeps_its_undefined_correlations(valid, tmp_path):
    """With one net, Kendall's τ and Spearman's ρ are NaN, and validate writes them so: read back as written."""
    doc = copy.deepcopy(valid["validation"])
    doc["nets"] = doc["nets"][:1]
    doc["summary"].update(nets=1, kendall_tau=math.nan, spearman_rho=math.nan, in_use=None, calibration=None,
                          correction=None)
    path = tmp_path / "validate.json"
    path.write_text(json.dumps(doc))
    assert math.isnan(load_validation(path)["summary"]["kendall_tau"])


def _nan_weight(state):
    net = dict(state["supernet"])
    key = next(k for k, v in net.items() if v.is_floating_point())
    net[key] = torch.full_like(net[key], math.nan)
    return {**state, "supernet": net}


@pytest.mark.parametrize("edit,field", [
    (lambda d: {**d, "history": json.dumps(json.loads(d["history"])[:1])},
     "field 'history': 1 epoch records for 2 epochs done"),
    (lambda d: {**d, "history": "[" * 100_000 + "]" * 100_000}, "field 'history': Invalid JSON"),
    (lambda d: {**d, "config": "{"}, "field 'config': Invalid JSON"),
    (lambda d: {**d, "epoch": -1}, "field 'epoch'"),
    (lambda d: {**d, "baseline": math.nan}, "field 'baseline'"),
    (lambda d: {**d, "weight_opt": {**d["weight_opt"], "param_groups": [
        {**d["weight_opt"]["param_groups"][0], "lr": "0.05"}]}}, "field 'weight_opt.param_groups.0.lr'"),
    (lambda d: {**d, "supernet": {**d["supernet"], next(iter(d["supernet"])): torch.zeros(2)}},
     "field 'supernet': does not fit this search (RuntimeError)"),
    (_nan_weight, "not finite (NaN or infinite weights)"),
])
def test_checkpoint_refusals(valid, search_run, tmp_path, edit, field):
    state = torch.load(search_run / "run" / "checkpoint.pt", weights_only=True)
    path = tmp_path / "checkpoint.pt"
    torch.save(edit(state), path)
    s = _search(search_run, valid).setup()
    _refused(s._load_checkpoint, path, field)
