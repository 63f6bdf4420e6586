"""The stages of `tvm-nas run` as declarations: the runner, the resume check, run.json's model and the summary's
artifact list follow from them, so a new stage is one class. No TVM, no training: stages that write a file."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from tvm_nas.config import RunConfig
from tvm_nas.errors import TvmNasError
from tvm_nas.io import sha256_file
from tvm_nas.records import StageDone, check, run_state_model
from tvm_nas.stages import PIPELINE, STAGES, RunState, Stage


def test_the_pipeline_is_its_declarations():
    assert STAGES == tuple(s.name for s in PIPELINE) and len(set(STAGES)) == len(STAGES)
    done = RunState.model_fields["done"].annotation
    assert [f.alias for f in done.model_fields.values()] == list(STAGES)  # run.json's stages, in their order
    for i, s in enumerate(PIPELINE):
        assert issubclass(s.record, StageDone) and set(s.needs) <= set(STAGES[:i]), s.name
        assert set(s.files) <= set(s.record.model_fields), s.name  # each file is a typed path of its record


class Write(Stage):
    name = "write"
    files = {"out": "a file"}

    def run(self, ctx) -> dict:
        (ctx.dir / "w").mkdir(exist_ok=True)
        (ctx.dir / "w" / "a.txt").write_text("x")
        return {"out": "w/a.txt"}


class Read(Stage):
    name = "read"
    needs = ("write",)
    runs = 0

    def run(self, ctx) -> dict:
        Read.runs += 1
        return {"chars": len((ctx.dir / ctx.done["write"]["out"]).read_text())}


def test_a_stage_is_one_class(tmp_path, monkeypatch):
    """Two stages declared and listed: the runner runs them in order, records each declared file's digest, redoes
    a stage whose file changed (and every stage after it), and run.json's model takes them."""
    import tvm_nas.run as run_mod

    monkeypatch.setattr(run_mod, "PIPELINE", (Write, Read))
    state = {"schema": 1, "config": RunConfig().model_dump(mode="json"), "done": {}, "created": "20260101-000000"}
    run_mod.Run(tmp_path, state, Console(file=io.StringIO())).go(stop_after="read")
    assert list(state["done"]) == ["write", "read"] and state["done"]["read"]["chars"] == 1
    assert state["done"]["write"]["artifacts"] == {"w/a.txt": sha256_file(tmp_path / "w" / "a.txt")}
    assert Read.runs == 1
    saved = json.loads((tmp_path / "run.json").read_text())
    check(tmp_path / "run.json", saved, run_state_model([(s.name, s.record) for s in (Write, Read)]))
    with pytest.raises(TvmNasError, match="field 'done.read'"):  # a stage the pipeline does not have
        check(tmp_path / "run.json", saved, run_state_model([("write", Write.record)]))

    (tmp_path / "w" / "a.txt").write_text("changed by hand")
    out = io.StringIO()
    run_mod.Run(tmp_path, saved, Console(file=out, width=200)).go(stop_after="read")
    assert "changed since stage 'write' wrote it; redoing write, read" in out.getvalue()
    assert Read.runs == 2 and saved["done"]["read"]["chars"] == 1


def test_the_summary_lists_what_the_stages_declare():
    by = {s.name: s for s in PIPELINE}
    assert by["compile"].outputs({"manifest": "b/m.json", "module": "b/m.so", "onnx": "b/m.onnx"}) == {
        "b/m.onnx": "onnx", "b/m.so": "module", "b/m.json": "manifest"}
    assert by["baselines"].outputs({"nets": {"fastest": {"arch": "b/f.arch.json", "weights": "b/f/model.pt"}}}) == {
        "b/f.arch.json": "", "b/f/model.pt": ""}  # digested, not listed
    # compare's files, also as runs recorded them before the stage named them
    assert by["compare"].outputs({"rows": [{}]}) == {"compare/compare.csv": "comparison", "compare/compare.json": ""}
    assert by["compare"].outputs({"peers": []}) == {}  # not run on this target: no file
    assert by["report"].outputs({}) == {"report/index.html": "report"}  # listed in the summary it draws from
