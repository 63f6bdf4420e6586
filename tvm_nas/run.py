"""`tvm-nas run`: the whole job, stage by stage, each stage's result on disk so a run resumes where it stopped.

The stages are the classes of :mod:`tvm_nas.stages` (profile -> search -> train -> baselines -> compile -> compare
-> validate -> report), all inside one run directory; here the runner, what they share, and the run's summary.
"""

from __future__ import annotations

import datetime as _dt
import time
from pathlib import Path

from pydantic import ValidationError
from rich.console import Console

from .config import RunConfig
from .errors import TvmNasError
from .io import atomic_write_json, sha256_file
from .profile.model import FITTED, LatencyModel
from .records import ValidationFile, load_record
from .specfile import validation_error
from .stages import MATCH, PIPELINE, accuracies, load_run_state
from .timing import TIMING

STATE = "run.json"


def start_or_resume(given: dict, out: str | None = None, resume: str | None = None,
                    stop_after: str | None = None) -> Path:
    """Start a run in `out` (default ``runs/<timestamp>``) with the settings in `given`, or resume one.

    Returns:
        The run directory.
    """
    console = Console()
    if resume:
        run_dir = Path(resume)
        state = load_run_state(run_dir / STATE)  # stages.RunState: a damaged run.json is one line
        _refuse_other_settings(run_dir, state["config"], given, out)
        done = [s.name for s in PIPELINE if s.name in state["done"]]
        console.print(f"resuming {run_dir}: done: {', '.join(done) or 'nothing'}")
    else:
        try:
            config = RunConfig(**given)
        except ValidationError as e:
            raise validation_error("", e, {k: "--" + k.replace("_", "-") for k in given}) from None
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = Path(out or f"runs/{stamp}")
        if (run_dir / STATE).exists():
            raise TvmNasError(f"{run_dir}: a run already lives here; continue it with: tvm-nas run --resume {run_dir}")
        state = {"schema": 1, "config": config.model_dump(mode="json"), "done": {}, "created": stamp}
        run_dir.mkdir(parents=True, exist_ok=True)
        _save(run_dir, state)
    Run(run_dir, state, console).go(stop_after=stop_after)
    return run_dir


def _refuse_other_settings(run_dir: Path, kept: dict, given: dict, out: str | None) -> None:
    """A resumed run keeps the settings it started with: a setting given again must equal the kept one, or the
    run would silently go on with the old one (or mix two)."""
    if out is not None and Path(out).resolve() != run_dir.resolve():
        raise TvmNasError(f"--out {out}: a resumed run stays in its own folder {run_dir}; give only --resume")
    for k, v in given.items():
        if k in kept and kept[k] != v:
            raise TvmNasError(f"--{k.replace('_', '-')} {v}: {run_dir / STATE} was started with {k} = {kept[k]!r}, "
                              "and a resumed run keeps its settings; start a new run (--out) to change it")


def _save(run_dir: Path, state: dict) -> None:
    atomic_write_json(run_dir / STATE, state)


class Run:
    """One run directory and its state: what the stages of :data:`~tvm_nas.stages.PIPELINE` share, and the runner
    that runs them in order, skips the finished ones and redoes those whose files went missing or changed."""

    def __init__(self, run_dir: Path, state: dict, console: Console):
        from .space import load_space
        from .targets import load_target

        self.dir, self.state, self.console = run_dir, state, console
        try:
            self.cfg = RunConfig.model_validate(state["config"])
        except (KeyError, ValidationError) as e:
            raise TvmNasError(f"{run_dir / STATE}: field 'config': damaged run settings ({e.__class__.__name__}); "
                              "start a new run") from None
        self.space = load_space(self.cfg.space)
        self.target = load_target(self.cfg.target)

    @property
    def done(self) -> dict:
        """Each finished stage's result, by stage name."""
        return self.state["done"]

    # -- driver ----------------------------------------------------------------------------------------------
    def go(self, stop_after: str | None = None) -> None:
        import torch

        torch.set_num_threads(self.cfg.threads)
        self._check_artifacts()
        if stop_after in self.done:
            self.console.print(f"stage '{stop_after}' is already done; nothing to run (continue with: "
                               f"tvm-nas run --resume {self.dir})")
            return
        t_all = time.perf_counter()
        for i, stage in enumerate(PIPELINE, 1):
            if stage.name in self.done:
                continue
            missing = [s for s in stage.needs if s not in self.done]
            if missing:  # the pipeline's order forbids it; a hand-edited run.json could still say so
                raise TvmNasError(f"{self.dir / STATE}: stage '{stage.name}' needs {', '.join(missing)}, not done")
            self.console.rule(f"[bold]stage {i}/{len(PIPELINE)}: {stage.name}")
            t0 = time.perf_counter()
            result = {"seconds": 0.0, **(stage().run(self) or {})}
            result["seconds"] = round(time.perf_counter() - t0, 1)
            result["artifacts"] = {rel: sha256_file(self.dir / rel) for rel in stage.outputs(result)
                                   if (self.dir / rel).is_file()}
            self.done[stage.name] = result
            self.save()
            if stage.name == stop_after:
                self.console.print(f"stopped after {stage.name}; continue with: tvm-nas run --resume {self.dir}")
                return
        self.console.print(f"run finished in {time.perf_counter() - t_all:.0f} s (this session)")
        from .report import terminal_summary

        self.console.print(terminal_summary(self.dir))

    def _check_artifacts(self) -> None:
        """Redo the first finished stage whose files are missing or changed, and every stage after it."""
        done = self.done
        names = [s.name for s in PIPELINE]
        for i, stage in enumerate(names):
            if stage not in done:
                continue
            for rel, digest in done[stage].get("artifacts", {}).items():
                p = self.dir / rel
                what = "missing" if not p.is_file() else "changed" if sha256_file(p) != digest else None
                if what:
                    redo = [s for s in names[i:] if s in done]
                    self.console.print(f"[yellow]{p}: {what} since stage '{stage}' wrote it; redoing "
                                       f"{', '.join(redo)}")
                    for s in redo:
                        done.pop(s)
                    self.save()
                    return

    def save(self) -> None:
        _save(self.dir, self.state)

    # -- what the stages share -------------------------------------------------------------------------------
    def rel(self, p: Path | str) -> str:
        return str(Path(p).resolve().relative_to(self.dir.resolve()))

    def table(self) -> LatencyModel:
        return LatencyModel.load(self.dir / self.done["profile"]["table"], space=self.space, target=self.target)

    def device(self):
        """The torch device of the search and training stages (``--device``; auto: cuda when torch sees a GPU)."""
        from .search.distributed import resolve_device

        return resolve_device(self.cfg.device)

    def data(self):
        from .data import load_data

        return load_data(self.cfg.data, self.space, max_samples=self.cfg.max_samples, seed=self.cfg.seed)

    def builds(self) -> dict:
        """name -> the compile stage's build of the searched net and of each baseline (finished or to be), each
        architecture labelled with the run's name for it (compare's and validate's rows carry that name)."""
        from .arch import load_architecture
        from .deploy.compile import Built

        d = self.done
        nets = {"searched": (d["search"]["arch"], d["train"]["weights"], self.dir / "build" / self.target.name)}
        for name, net in d["baselines"]["nets"].items():
            build = self.dir / "build" / "baselines" / Path(net["arch"]).name.removesuffix(".arch.json")
            nets[name] = (net["arch"], net["weights"], build)
        out = {}
        for name, (arch, weights, build) in nets.items():
            a = load_architecture(self.dir / arch)
            a.label = name
            out[name] = Built(a, self.target, self.dir / weights, build)
        return out

    # -- the summary the report renders ----------------------------------------------------------------------
    def summary(self) -> dict:
        from .arch import load_architecture

        d = self.done
        table = self.table()
        blocks = self.space.blocks()
        arch = load_architecture(self.dir / d["search"]["arch"]).file
        compiled = d["compile"]["measured_us"]
        checked = self._validated()
        shared = (d["baselines"].get("supernet") or {}).get("shared_accuracy", {})
        runs = {"searched": {"kind": "searched", "ops": d["search"]["ops"], **d["train"],
                             "predicted_us": d["search"]["predicted_us"]}, **d["baselines"]["nets"]}
        nets = [{"name": name, "kind": n["kind"], "ops": n["ops"], **accuracies(n),
                 "supernet_accuracy": shared.get(name), "predicted_us": n["predicted_us"],
                 # the validate stage's interleaved timing; else the compile stage's median
                 "measurement": checked.get(name, {}).get("measurement") or _median(compiled.get(name)),
                 "compile_measured_us": compiled.get(name),
                 **{k: v for k, v in checked.get(name, {}).items() if k != "measurement"}}
                for name, n in runs.items()]
        derivation = arch.derivation
        return {
            "schema": 1,
            "space": {"name": self.space.name, "hash": self.space.hash,
                      "input": [self.space.input.channels, self.space.input.resolution, self.space.input.resolution],
                      "num_classes": self.space.num_classes,
                      "blocks": [{"index": b.index, "in_channels": b.in_channels, "out_channels": b.out_channels,
                                  "stride": b.stride, "in_hw": b.in_hw, "candidates": list(b.candidates)}
                                 for b in blocks],
                      "fixed": [{"op": k.op, "in_shape": list(k.in_shape), "out_channels": k.out_channels,
                                 "stride": k.stride} for k in self.space.fixed_layers()]},
            "target": {"name": self.target.name, "tvm": table.target.get("tvm")},
            "budget_us": d["profile"]["budget_us"],
            "arch": {"ops": list(arch.ops), "probabilities": arch.probabilities,
                     "predicted_us": arch.predicted_latency_us, "path": d["search"]["arch"],
                     "budget_met": derivation.budget_met if derivation else None,
                     "budget_feasible": derivation.budget_feasible if derivation else None},
            "latency_table": {"path": d["profile"]["table"],
                              "blocks": [[float(x) for x in v] for v in table.block_matrix(self.space)],
                              "fixed_us": table.fixed_latency(self.space)},
            "nets": nets,
            "ranking": _ranking(nets, d["baselines"].get("supernet")),
            "ground_truth": self._ground_truth(),
            "peers": _peers(d.get("compare", {}).get("rows", [])),
            "validation": self._validation(),
            "stages": [{"name": s.name, "seconds": d[s.name]["seconds"], "status": "done"} for s in PIPELINE
                       if s.name in d],
            # every file a stage declares, the report's page included (written by the stage now running)
            "artifacts": {what: rel for s in PIPELINE for rel, what in
                          s.outputs(d.get(s.name) or {}).items() if what},
        }

    def _ground_truth(self) -> dict | None:
        """The space's ground truth on this target, when one was exported beside its table."""
        from .groundtruth import groundtruth_path, load_groundtruth

        gt = load_groundtruth(groundtruth_path(self.cfg.logs_dir, self.target.name, self.space.name), self.space)
        if gt is None:
            return None
        front = {tuple(n.ops) for n in gt.front()}
        return {"data": gt.data, "recipe": gt.recipe, "noise_sd": gt.noise_sd,
                "nets": [{"ops": n.ops, "test_accuracy": n.test_accuracy, "measured_us": n.measured_us,
                          "front": tuple(n.ops) in front} for n in gt.nets]}

    def _validated(self) -> dict[str, dict]:
        """The run's name of a net -> the validate stage's interleaved timing of it (``measured``: median,
        quartiles, stable, rounds) and each fitted model's prediction of it when that model is used.

        The timing replaces the compile stage's figure (kept as ``compile_measured_us``): that one timed each net
        once, in the compile stage's own minute of the machine.
        """
        v = self.done.get("validate")
        if not v:
            return {}
        doc = load_record(self.dir / v["result"], ValidationFile, "validation result")[0]
        used = {f.row for f in FITTED if getattr(getattr(doc.summary, f.key), "better", False)}
        out = {}
        for r in doc.nets:
            fields = {"measurement": {k: getattr(r.measurement, k) for k in TIMING},
                      **{f.row: getattr(r, f.row) if f.row in used else None for f in reversed(FITTED)}}
            for name in (r.net, *(r.aliases or ())):  # a net validate timed once under several names
                out[name] = fields
        return out

    def _validation(self) -> dict | None:
        v = self.done.get("validate")
        return None if not v else {"summary": v["summary"], "result": v["result"],
                                   "figure": str(Path(v["result"]).parent / "validate.png")}


def _median(us: float | None) -> dict | None:
    """A timing of which only the median is known (the compile stage records no more)."""
    return None if us is None else {**dict.fromkeys(TIMING), "median": us}


def _ranking(nets: list[dict], supernet: dict | None) -> dict:
    """Where the searched net stands among the matched-latency nets (by test accuracy only), and the supernet's τ.

    On the validation split no rank is given: the search chose the net on those very images.
    """
    searched = nets[0]
    matched = [n for n in nets if n["kind"] == "matched" and n.get("accuracy") is not None]
    out = {"accuracy_set": searched.get("accuracy_set"), "matched": len(matched), "rank": None,
           "supernet_tau": (supernet or {}).get("tau"), "supernet_nets": (supernet or {}).get("nets")}
    if searched.get("accuracy_set") == "test" and searched.get("accuracy") is not None and matched:
        out["rank"] = 1 + sum(n["accuracy"] > searched["accuracy"] for n in matched)
    ref = (searched.get("measurement") or {}).get("median")
    if ref:  # the nets were matched on the table's prediction; how close they came once measured
        medians = [(n.get("measurement") or {}).get("median") for n in matched]
        out["matched_measured_within"] = sum(m is not None and abs(m - ref) <= MATCH * ref for m in medians)
    return out


def _peers(rows: list[dict]) -> list[dict]:
    """Compare rows (one per net x runtime) -> one dict per net with every runtime's row."""
    keys = {"tvm": "tvm_us", "tvm-untuned": "tvm_untuned_us", "pytorch": "pytorch_us",
            "onnxruntime": "onnxruntime_us"}
    nets: dict[str, dict] = {}
    for r in rows:
        net = nets.setdefault(r.get("architecture", "?"), {"net": r.get("architecture", "?"), "runtimes": []})
        net["runtimes"].append({k: r.get(k) for k in ("runtime", "measured_us", "vs_tvm", "setting", "check")})
        k = keys.get(r.get("runtime"))
        if k:
            net[k] = r.get("measured_us")
    return list(nets.values())
