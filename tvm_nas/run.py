"""`tvm-nas run`: the whole job, stage by stage, each stage's result on disk so a run resumes where it stopped.

profile -> search -> train -> baselines -> compile -> compare -> validate -> report, all inside one run directory.
"""

from __future__ import annotations

import datetime as _dt
import json
import time
from pathlib import Path

import numpy as np
from pydantic import ValidationError
from rich.console import Console

from .config import STAGES, RunConfig
from .console import progress
from .errors import TvmNasError
from .io import atomic_write_json, sha256_file
from .profile.model import FITTED, LatencyModel
from .records import load_run_state, load_validation
from .specfile import validation_error

STATE = "run.json"
N_MATCHED = 3  # random nets of the searched net's latency, trained alike: the baseline the search must beat
MATCH = 0.05  # "matched": predicted latency within ±5% of the searched net's


def start_or_resume(given: dict, out: str | None = None, resume: str | None = None,
                    stop_after: str | None = None) -> Path:
    """Start a run in `out` (default ``runs/<timestamp>``) with the settings in `given`, or resume one.

    Returns:
        The run directory.
    """
    console = Console()
    if resume:
        run_dir = Path(resume)
        state = load_run_state(run_dir / STATE)  # records.RunState: a damaged run.json is one line
        console.print(f"resuming {run_dir}: done: {', '.join(s for s in STAGES if s in state['done']) or 'nothing'}")
    else:
        try:
            config = RunConfig(**given)
        except ValidationError as e:
            raise validation_error("tvm-nas run", e, {k: "--" + k.replace("_", "-") for k in given}) from None
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = Path(out or f"runs/{stamp}")
        if (run_dir / STATE).exists():
            raise TvmNasError(f"{run_dir}: a run already lives here; continue it with: tvm-nas run --resume {run_dir}")
        state = {"schema": 1, "config": config.model_dump(mode="json"), "done": {}, "created": stamp}
        run_dir.mkdir(parents=True, exist_ok=True)
        _save(run_dir, state)
    Run(run_dir, state, console).go(stop_after=stop_after)
    return run_dir


def _save(run_dir: Path, state: dict) -> None:
    atomic_write_json(run_dir / STATE, state)


class Run:
    """One run directory and its state; each stage method returns what it records."""

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

    # -- driver ----------------------------------------------------------------------------------------------
    def go(self, stop_after: str | None = None) -> None:
        import torch

        torch.set_num_threads(self.cfg.threads)
        self._check_artifacts()
        t_all = time.perf_counter()
        for i, stage in enumerate(STAGES, 1):
            if stage in self.state["done"]:
                continue
            self.console.rule(f"[bold]stage {i}/{len(STAGES)}: {stage}")
            t0 = time.perf_counter()
            result = {"seconds": 0.0, **(getattr(self, f"_{stage}")() or {})}
            result["seconds"] = round(time.perf_counter() - t0, 1)
            result["artifacts"] = {rel: sha256_file(self.dir / rel) for rel in _artifacts(stage, result)
                                   if (self.dir / rel).is_file()}
            self.state["done"][stage] = result
            _save(self.dir, self.state)
            if stage == stop_after:
                self.console.print(f"stopped after {stage}; continue with: tvm-nas run --resume {self.dir}")
                return
        self.console.print(f"run finished in {time.perf_counter() - t_all:.0f} s (this session)")
        from .report import terminal_summary

        self.console.print(terminal_summary(self.dir))

    def _check_artifacts(self) -> None:
        """Redo the first finished stage whose files are missing or changed, and every stage after it."""
        done = self.state["done"]
        for i, stage in enumerate(STAGES):
            if stage not in done:
                continue
            for rel, digest in done[stage].get("artifacts", {}).items():
                p = self.dir / rel
                what = "missing" if not p.is_file() else "changed" if sha256_file(p) != digest else None
                if what:
                    redo = [s for s in STAGES[i:] if s in done]
                    self.console.print(f"[yellow]{p}: {what} since stage '{stage}' wrote it; redoing "
                                       f"{', '.join(redo)}")
                    for s in redo:
                        done.pop(s)
                    _save(self.dir, self.state)
                    return

    def rel(self, p: Path | str) -> str:
        return str(Path(p).resolve().relative_to(self.dir.resolve()))

    def table(self) -> LatencyModel:
        return LatencyModel.load(self.dir / self.state["done"]["profile"]["table"], space=self.space,
                                 target=self.target)

    # -- stages ----------------------------------------------------------------------------------------------
    def _profile(self) -> dict:
        from .profile import profile

        measured = profile(self.space, self.target, trials=self.cfg.trials, logs_dir=self.cfg.logs_dir,
                           seed=self.cfg.seed, console=self.console)
        # with what an earlier validate fitted to it: the run predicts what the rest of the product does
        table = LatencyModel.load(measured.path, space=self.space, target=self.target).copy_to(self.dir / "table")
        dest = table.path
        fast, slow = table.extremes(self.space)
        lo, hi = table.predict(self.space, fast), table.predict(self.space, slow)
        budget = self.cfg.latency_ms * 1000 if self.cfg.latency_ms else (lo + hi) / 2
        self.console.print(f"fastest net {lo:.1f} µs, slowest {hi:.1f} µs -> budget {budget:.1f} µs"
                           + ("" if self.cfg.latency_ms else " (halfway)"))
        if budget < lo:
            self.console.print(f"[bold red]warning:[/] the budget {budget:.1f} µs is below the fastest net of the "
                               f"space ({lo:.1f} µs): no architecture can meet it; the searched net is marked over "
                               "budget")
        return {"table": self.rel(dest), "fastest_us": lo, "slowest_us": hi, "budget_us": budget,
                "fastest_ops": fast, "slowest_ops": slow}

    def device(self):
        """The torch device of the search and training stages (``--device``; auto: cuda when torch sees a GPU)."""
        from .search.distributed import resolve_device

        return resolve_device(self.cfg.device)

    def _data(self):
        from .data import load_data

        return load_data(self.cfg.data, self.space, max_samples=self.cfg.max_samples, seed=self.cfg.seed)

    def _search(self) -> dict:
        from .search import ProxylessSearch
        from .search.distributed import Dist

        conf = self.cfg.search(self.state["done"]["profile"]["budget_us"])
        run = self.dir / "search"
        s = ProxylessSearch(self.space, self.table(), self._data(), conf, run, console=self.console,
                            dist=Dist(device=self.device()))
        s.fit(resume=(run / "checkpoint.pt").exists())
        return {"arch": self.rel(s.arch_path_), "predicted_us": s.arch_["predicted_latency_us"],
                "ops": s.arch_["ops"]}

    def _train(self) -> dict:
        from .train import train_arch

        arch = self.dir / self.state["done"]["search"]["arch"]
        res = train_arch(arch, self.cfg.data, self.cfg.train(), self.dir / "train",
                         init_from=self.dir / "search", console=self.console, device=self.device(),
                         test_data=self.cfg.test_data)
        return {"weights": self.rel(self.dir / "train" / "model.pt"), **_accuracies(res)}

    def baseline_ops(self) -> dict[str, tuple[str, list[str]]]:
        from .arch import reference_ops

        prof = self.state["done"]["profile"]
        nets = {"fastest": ("fastest", prof["fastest_ops"]), "slowest": ("slowest", prof["slowest_ops"])}
        try:
            nets = {"mobilenetv2 (all k3_e6)": ("reference", reference_ops(self.space)), **nets}
        except TvmNasError:
            pass
        searched = self.state["done"]["search"]
        for i, ops in enumerate(matched_nets(self.space, self.table(), searched["ops"], searched["predicted_us"],
                                             N_MATCHED, self.cfg.seed + 1)):
            nets[f"matched-{i + 1}"] = ("matched", ops)
        return nets

    def _baselines(self) -> dict:
        from .arch import arch_document, write_arch
        from .train import train_arch

        table, out = self.table(), {}
        nets = self.baseline_ops()
        done = self.state.setdefault("baselines_partial", {})
        with progress(self.console) as prog:
            bar = prog.add_task("training baselines", total=len(nets), completed=len(done))
            for name, (kind, ops) in nets.items():
                if name in done:
                    continue
                slug = name.split(" ")[0]
                arch = write_arch(self.dir / "baselines" / f"{slug}.arch.json",
                                  arch_document(self.space, ops, None, table))
                res = train_arch(arch, self.cfg.data, self.cfg.train(), self.dir / "baselines" / slug,
                                 device=self.device(), test_data=self.cfg.test_data)
                done[name] = {"kind": kind, "ops": ops, "arch": self.rel(arch), **_accuracies(res),
                              "weights": self.rel(self.dir / "baselines" / slug / "model.pt"),
                              "predicted_us": table.predict(self.space, ops)}
                _save(self.dir, self.state)
                prog.advance(bar)
        out = {"nets": dict(done), "supernet": self._supernet_ranking(done)}
        self.state.pop("baselines_partial", None)
        return out

    def _supernet_ranking(self, nets: dict) -> dict:
        """Each trained net's accuracy with the supernet's shared weights, and its Kendall τ against the accuracy
        trained alone (test set when there is one): the search's own warning light."""
        from .search.ranking import kendall_tau, load_supernet, supernet_accuracies

        d = self.state["done"]
        alone = {"searched": d["train"]["accuracy"], **{k: n["accuracy"] for k, n in nets.items()}}
        ops = {"searched": d["search"]["ops"], **{k: n["ops"] for k, n in nets.items()}}
        conf = self.cfg.search(d["profile"]["budget_us"])
        shared = supernet_accuracies(load_supernet(self.space, self.dir / "search"), self._data(), ops,
                                     conf.val_fraction, conf.seed)
        names = [k for k in ops if alone.get(k) is not None]
        tau = kendall_tau([shared[k] for k in names], [alone[k] for k in names])
        line = (f"supernet ranking: Kendall τ {tau:+.2f} between the {len(names)} nets' accuracy with the shared "
                f"weights and trained alone ({d['train']['accuracy_set']})")
        if not tau > 0.3:
            line += ("; [bold yellow]the supernet barely ranks these nets: the searched net may be chosen by "
                     "noise (longer search, or a higher --arch-lr)[/]")
        self.console.print(line)
        return {"tau": None if tau != tau else round(tau, 4), "nets": len(names), "accuracy_set":
                d["train"]["accuracy_set"], "shared_accuracy": shared}

    def _compile(self) -> dict:
        """The searched net and the baselines, built with the target's database, then timed interleaved."""
        from .deploy import compile_arch
        from .deploy.compile import LIBRARY, ONNX_FILE, time_builds

        untuned = self.cfg.trials == 0  # a --trials 0 profile has no database: default schedules
        table = self.table()
        builds = self.builds()
        searched = builds["searched"]
        compile_arch(searched.arch, self.target, weights=searched.weights, out=searched.build_dir, trials=0,
                     logs_dir=self.cfg.logs_dir, measure=False, untuned=untuned, console=self.console, table=table)
        partial = self.state.setdefault("compile_partial", {})
        with progress(self.console) as prog:
            bar = prog.add_task("compiling baselines", total=len(builds) - 1, completed=len(partial))
            for name, b in builds.items():
                if name == "searched" or name in partial:
                    continue
                compile_arch(b.arch, self.target, weights=b.weights, out=b.build_dir, trials=0,
                             logs_dir=self.cfg.logs_dir, verify=False, measure=False, untuned=untuned,
                             console=self.console, table=table)
                partial[name] = "built"
                _save(self.dir, self.state)
                prog.advance(bar)
        # timed together, as validate and compare time them: one module alone in its own minute of the machine's
        # life is not comparable with the next one alone in another
        measured = time_builds(builds, self.target, console=self.console)
        self.state.pop("compile_partial", None)
        out = searched.build_dir
        return {"measured_us": measured, "manifest": self.rel(out / "manifest.json"),
                "module": self.rel(out / LIBRARY), "onnx": self.rel(out / ONNX_FILE)}

    def builds(self) -> dict:
        """name -> the compile stage's build of the searched net and of each baseline (finished or to be)."""
        from .arch import load_architecture
        from .deploy.compile import Built

        d = self.state["done"]
        out = {"searched": Built(load_architecture(self.dir / d["search"]["arch"]), self.target,
                                 self.dir / d["train"]["weights"], self.dir / "build" / self.target.name)}
        for name, net in d["baselines"]["nets"].items():
            out[name] = Built(load_architecture(self.dir / net["arch"]), self.target, self.dir / net["weights"],
                              self._baseline_build(net))
        return out

    def _baseline_build(self, net: dict) -> Path:
        return self.dir / "build" / "baselines" / Path(net["arch"]).name.removesuffix(".arch.json")

    def _compare(self) -> dict:
        """The searched and the reference net against their peers, reusing the compile stage's builds."""
        from .deploy import is_host_like, write_rows
        from .deploy.compare import compare_built

        if not is_host_like(self.target):
            self.console.print(f"[yellow]{self.target.name} is not this machine: PyTorch / ONNX Runtime peers "
                               "are measured on the host only; skipped")
            return {"peers": []}
        d = self.state["done"]
        builds = self.builds()
        built = [builds["searched"]]
        ref = next((name for name, n in d["baselines"]["nets"].items() if n["kind"] == "reference"), None)
        if ref is not None:
            builds[ref].arch.label = "reference (mbconv_k3_e6)"
            built.append(builds[ref])
        rows = compare_built(built)
        write_rows(rows, self.dir / "compare" / "compare.csv", self.dir / "compare" / "compare.json")
        return {"rows": rows}

    def _validate(self) -> dict:
        """The run's nets (searched and baselines) timed interleaved against the run's own table, reusing the
        compile stage's builds; a fitted model it earns is written beside that copy, not into --logs-dir."""
        from .deploy.validate import validate

        builds = self.builds()
        doc = validate(self.space, self.target, n=0, archs=[b.arch.path for b in builds.values()],
                       logs_dir=self.cfg.logs_dir, out=self.dir / "validate", seed=self.cfg.seed,
                       console=self.console, model=self.table(), built=list(builds.values()))
        return {"result": self.rel(self.dir / "validate" / "validate.json"), "summary": doc["summary"]}

    def _report(self) -> dict:
        from .report import render_report, write_summary

        write_summary(self.dir, self.summary())
        page = render_report(self.dir)
        return {"page": self.rel(page)}

    # -- the summary the report renders ----------------------------------------------------------------------
    def summary(self) -> dict:
        d = self.state["done"]
        table = self.table()
        blocks = self.space.blocks()
        arch = json.loads((self.dir / d["search"]["arch"]).read_text())
        measured = d["compile"]["measured_us"]
        checked = self._validated()
        shared = (d["baselines"].get("supernet") or {}).get("shared_accuracy", {})
        nets = [{"name": "searched", "kind": "searched", "ops": d["search"]["ops"],
                 **_accuracies(d["train"]), "supernet_accuracy": shared.get("searched"),
                 "predicted_us": d["search"]["predicted_us"], "measured_us": measured.get("searched"),
                 "compile_measured_us": measured.get("searched"), **checked.get(tuple(d["search"]["ops"]), {})}]
        for name, n in d["baselines"]["nets"].items():
            nets.append({"name": name, "kind": n["kind"], "ops": n["ops"], **_accuracies(n),
                         "supernet_accuracy": shared.get(name),
                         "predicted_us": n["predicted_us"], "measured_us": measured.get(name),
                         "compile_measured_us": measured.get(name), **checked.get(tuple(n["ops"]), {})})
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
            "arch": {"ops": arch["ops"], "probabilities": arch.get("probabilities"),
                     "predicted_us": arch["predicted_latency_us"], "path": d["search"]["arch"],
                     "budget_met": arch.get("derivation", {}).get("budget_met"),
                     "budget_feasible": arch.get("derivation", {}).get("budget_feasible")},
            "latency_table": {"path": d["profile"]["table"],
                              "blocks": [[float(x) for x in v] for v in table.block_matrix(self.space)],
                              "fixed_us": table.fixed_latency(self.space)},
            "nets": nets,
            "ranking": _ranking(nets, d["baselines"].get("supernet")),
            "ground_truth": self._ground_truth(),
            "peers": _peers(d.get("compare", {}).get("rows", [])),
            "validation": self._validation(),
            "stages": [{"name": s, "seconds": d[s]["seconds"], "status": "done"} for s in STAGES if s in d],
            "artifacts": {"latency table": d["profile"]["table"], "architecture": d["search"]["arch"],
                          "weights": d["train"]["weights"], "onnx": d["compile"]["onnx"],
                          "module": d["compile"]["module"], "manifest": d["compile"]["manifest"],
                          "comparison": "compare/compare.csv", "validation": "validate/validate.json",
                          "report": "report/index.html"},
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

    def _validated(self) -> dict[tuple, dict]:
        """ops -> the interleaved measurement of that net by the validate stage (median, quartiles, stable).

        It replaces the compile stage's figure (kept as ``compile_measured_us``): that one timed each net alone.
        """
        v = self.state["done"].get("validate")
        if not v:
            return {}
        doc = load_validation(self.dir / v["result"])  # records.ValidationFile
        used = (doc.get("summary") or {}).get
        return {tuple(r["ops"]): {"measured_us": r["measured_us"], "measured_q1": r["measured_q1"],
                                  "measured_q3": r["measured_q3"], "stable": r["stable"],
                                  **{f.row: r.get(f.row) if (used(f.key) or {}).get("better") else None
                                     for f in reversed(FITTED)}}
                for r in doc["nets"]}

    def _validation(self) -> dict | None:
        v = self.state["done"].get("validate")
        return None if not v else {"summary": v["summary"], "result": v["result"],
                                   "figure": str(Path(v["result"]).parent / "validate.png")}


def _accuracies(res: dict) -> dict:
    """The accuracy a net is judged by and the set it comes from (older runs recorded validation only)."""
    from .train import accuracy_fields

    if "accuracy_set" in res:
        return {k: res.get(k) for k in ("accuracy", "accuracy_set", "val_accuracy", "test_accuracy")}
    val = res.get("val_accuracy", res.get("accuracy"))
    return {**accuracy_fields({"val_accuracy": val, "test_accuracy": res.get("test_accuracy")}),
            "val_accuracy": val, "test_accuracy": res.get("test_accuracy")}


def matched_nets(space, table: LatencyModel, searched: list[str], target_us: float, n: int,
                 seed: int) -> list[list[str]]:
    """``n`` random nets other than ``searched`` whose predicted latency is within ±:data:`MATCH` of
    ``target_us``; when the space has fewer, the nearest in latency complete the list.

    Spaces of up to 20,000 nets are enumerated; larger ones are sampled (20,000 draws).
    """
    import itertools
    import math

    from .space import canonical_ops

    rng = np.random.default_rng(seed)
    blocks = space.blocks()
    if math.prod(len(b.candidates) for b in blocks) <= 20_000:
        pool = [list(ops) for ops in itertools.product(*(b.candidates for b in blocks))]
    else:
        pool = [[str(rng.choice(b.candidates)) for b in blocks] for _ in range(20_000)]
    seen, nets = {tuple(canonical_ops(space, searched))}, []
    for ops in pool:  # each net once, and never the searched net under another spelling
        c = tuple(canonical_ops(space, ops))
        if c not in seen:
            seen.add(c)
            nets.append((list(c), abs(table.predict(space, list(c)) - target_us) / target_us))
    within = [ops for ops, gap in nets if gap <= MATCH]
    picks = [within[i] for i in rng.permutation(len(within))[:n]]
    if len(picks) < n:
        rest = sorted((gap, i) for i, (ops, gap) in enumerate(nets) if gap > MATCH)
        picks += [nets[i][0] for _, i in rest[:n - len(picks)]]
    return picks


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
    ref = searched.get("measured_us")
    if ref:  # the nets were matched on the table's prediction; how close they came once measured
        out["matched_measured_within"] = sum(n.get("measured_us") is not None
                                             and abs(n["measured_us"] - ref) <= MATCH * ref for n in matched)
    return out


def _artifacts(stage: str, result: dict) -> list[str]:
    """The files (relative to the run directory) a finished stage leaves for the stages after it."""
    if stage == "baselines":
        return [n[k] for n in result["nets"].values() for k in ("arch", "weights")]
    keys = {"profile": ("table",), "search": ("arch",), "train": ("weights",),
            "compile": ("manifest", "module", "onnx"), "validate": ("result",), "report": ("page",)}.get(stage, ())
    files = [result[k] for k in keys if k in result]
    if stage == "compare" and result.get("rows"):
        files.append("compare/compare.json")
    return files


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
