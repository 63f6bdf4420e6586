"""`tvm-nas run`: the whole job, stage by stage, each stage's result on disk so a run resumes where it stopped.

profile -> search -> train -> baselines -> compile -> compare -> validate -> report, all inside one run directory.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import shutil
import time
from pathlib import Path

import numpy as np
from rich.console import Console

from .errors import TvmNasError
from .io import atomic_write_json, read_json
from .latency import progress
from .latency_table import LatencyTable

STAGES = ("profile", "search", "train", "baselines", "compile", "compare", "validate", "report")
STATE = "run.json"
N_RANDOM = 3

DEFAULTS = {"space": "tiny", "target": "host", "data": "builtin", "latency_ms": None, "trials": 64,
            "logs_dir": "tuning_logs", "epochs": 8, "warmup_epochs": 2, "train_epochs": 6, "arch_lr": 0.02,
            "loss": "add", "seed": 0, "max_samples": None, "threads": 1}


def add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--space", help=f"search space (default {DEFAULTS['space']})")
    p.add_argument("--target", help=f"hardware target (default {DEFAULTS['target']})")
    p.add_argument("--data", help="builtin | imagefolder:PATH | cifar10:PATH (default builtin)")
    p.add_argument("--latency-ms", type=float,
                   help="latency budget (default: halfway between the space's fastest and slowest nets)")
    p.add_argument("--trials", type=int, help=f"MetaSchedule budget of the profile (default {DEFAULTS['trials']})")
    p.add_argument("--logs-dir", help="per-target tuning databases and tables (default tuning_logs)")
    p.add_argument("--epochs", type=int, help=f"search epochs (default {DEFAULTS['epochs']})")
    p.add_argument("--warmup-epochs", type=int,
                   help=f"weight-only warm-up epochs (default {DEFAULTS['warmup_epochs']})")
    p.add_argument("--train-epochs", type=int, help=f"training epochs of each net (default {DEFAULTS['train_epochs']})")
    p.add_argument("--arch-lr", type=float, help=f"Adam learning rate of α (default {DEFAULTS['arch_lr']}: "
                   "a short run needs α to move faster than the paper's 1e-3 over 90 epochs)")
    p.add_argument("--loss", choices=["mul", "add"], help=f"latency loss form (default {DEFAULTS['loss']})")
    p.add_argument("--max-samples", type=int, help="use at most this many images")
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=int, help="torch threads for training (default 1: TVM jobs share the cores)")
    p.add_argument("--out", help="run directory (default runs/<timestamp>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run; finished stages are kept")
    p.add_argument("--stop-after", choices=STAGES, help="stop cleanly after this stage (continue with --resume)")


def run_run(args) -> int:
    console = Console()
    if args.resume:
        run_dir = Path(args.resume)
        state = read_json(run_dir / STATE, "run state")
        console.print(f"resuming {run_dir}: done: {', '.join(s for s in STAGES if s in state['done']) or 'nothing'}")
    else:
        config = {k: (getattr(args, k) if getattr(args, k, None) is not None else v) for k, v in DEFAULTS.items()}
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = Path(args.out or f"runs/{stamp}")
        if (run_dir / STATE).exists():
            raise TvmNasError(f"{run_dir}: a run already lives here; continue it with: tvm-nas run --resume {run_dir}")
        state = {"schema": 1, "config": config, "done": {}, "created": stamp}
        run_dir.mkdir(parents=True, exist_ok=True)
        _save(run_dir, state)
    Run(run_dir, state, console).go(stop_after=args.stop_after)
    return 0


def _save(run_dir: Path, state: dict) -> None:
    atomic_write_json(run_dir / STATE, state)


class Run:
    """One run directory and its state; each stage method returns what it records."""

    def __init__(self, run_dir: Path, state: dict, console: Console):
        from .space import load_space
        from .targets import load_target

        self.dir, self.state, self.console = run_dir, state, console
        self.cfg = state["config"]
        self.space = load_space(self.cfg["space"])
        self.target = load_target(self.cfg["target"])

    # -- driver ----------------------------------------------------------------------------------------------
    def go(self, stop_after: str | None = None) -> None:
        import torch

        torch.set_num_threads(int(self.cfg["threads"]))
        t_all = time.perf_counter()
        for i, stage in enumerate(STAGES, 1):
            if stage in self.state["done"]:
                continue
            self.console.rule(f"[bold]stage {i}/{len(STAGES)}: {stage}")
            t0 = time.perf_counter()
            result = getattr(self, f"_{stage}")()
            self.state["done"][stage] = {"seconds": round(time.perf_counter() - t0, 1), **(result or {})}
            _save(self.dir, self.state)
            if stage == stop_after:
                self.console.print(f"stopped after {stage}; continue with: tvm-nas run --resume {self.dir}")
                return
        self.console.print(f"run finished in {time.perf_counter() - t_all:.0f} s (this session)")
        from .report import terminal_summary

        self.console.print(terminal_summary(self.dir))

    def rel(self, p: Path | str) -> str:
        return str(Path(p).resolve().relative_to(self.dir.resolve()))

    def table(self) -> LatencyTable:
        return LatencyTable.load(self.dir / self.state["done"]["profile"]["table"], space=self.space,
                                 target_name=self.target.name)

    # -- stages ----------------------------------------------------------------------------------------------
    def _profile(self) -> dict:
        from .latency import profile

        table = profile(self.space, self.target, trials=int(self.cfg["trials"]), logs_dir=self.cfg["logs_dir"],
                        seed=int(self.cfg["seed"]), console=self.console)
        dest = self.dir / "table" / table.path.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(table.path, dest)
        fast, slow = table.extremes(self.space)
        lo, hi = table.predict(self.space, fast), table.predict(self.space, slow)
        budget = self.cfg["latency_ms"] * 1000 if self.cfg["latency_ms"] else (lo + hi) / 2
        self.console.print(f"fastest net {lo:.1f} µs, slowest {hi:.1f} µs -> budget {budget:.1f} µs"
                           + ("" if self.cfg["latency_ms"] else " (halfway)"))
        return {"table": self.rel(dest), "fastest_us": lo, "slowest_us": hi, "budget_us": budget,
                "fastest_ops": fast, "slowest_ops": slow}

    def _data(self):
        from .data import load_data

        return load_data(self.cfg["data"], self.space, max_samples=self.cfg["max_samples"], seed=self.cfg["seed"])

    def _search(self) -> dict:
        from .search import ProxylessSearch, SearchConfig

        c = self.cfg
        conf = SearchConfig(latency_budget_us=self.state["done"]["profile"]["budget_us"], epochs=c["epochs"],
                            warmup_epochs=c["warmup_epochs"], arch_lr=c["arch_lr"], loss=c["loss"], seed=c["seed"],
                            max_samples=c["max_samples"])
        run = self.dir / "search"
        s = ProxylessSearch(self.space, self.table(), self._data(), conf, run, console=self.console)
        s.fit(resume=(run / "checkpoint.pt").exists())
        return {"arch": self.rel(s.arch_path_), "predicted_us": s.arch_["predicted_latency_us"],
                "ops": s.arch_["ops"]}

    def _train_config(self):
        from .search.train import TrainConfig

        c = self.cfg
        return TrainConfig(epochs=c["train_epochs"], seed=c["seed"], max_samples=c["max_samples"])

    def _train(self) -> dict:
        from .search.train import train_arch

        arch = self.dir / self.state["done"]["search"]["arch"]
        res = train_arch(arch, self.cfg["data"], self._train_config(), self.dir / "train",
                         init_from=self.dir / "search", console=self.console)
        return {"weights": self.rel(self.dir / "train" / "model.pt"), "accuracy": res["val_accuracy"]}

    def baseline_ops(self) -> dict[str, tuple[str, list[str]]]:
        from .network import reference_ops

        prof = self.state["done"]["profile"]
        nets = {"fastest": ("fastest", prof["fastest_ops"]), "slowest": ("slowest", prof["slowest_ops"])}
        try:
            nets = {"mobilenetv2 (all k3_e6)": ("reference", reference_ops(self.space)), **nets}
        except TvmNasError:
            pass
        rng = np.random.default_rng(self.cfg["seed"] + 1)
        for i in range(N_RANDOM):
            nets[f"random-{i + 1}"] = ("random", [str(rng.choice(b.candidates)) for b in self.space.blocks()])
        return nets

    def _baselines(self) -> dict:
        from .search.derive import arch_document, write_arch
        from .search.train import train_arch

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
                res = train_arch(arch, self.cfg["data"], self._train_config(), self.dir / "baselines" / slug)
                done[name] = {"kind": kind, "ops": ops, "arch": self.rel(arch), "accuracy": res["val_accuracy"],
                              "weights": self.rel(self.dir / "baselines" / slug / "model.pt"),
                              "predicted_us": table.predict(self.space, ops)}
                _save(self.dir, self.state)
                prog.advance(bar)
        out = {"nets": dict(done)}
        self.state.pop("baselines_partial", None)
        return out

    def _compile(self) -> dict:
        from .deploy import compile_arch

        d = self.state["done"]
        untuned = int(self.cfg["trials"]) == 0  # a --trials 0 profile has no database: default schedules
        searched = compile_arch(self.dir / d["search"]["arch"], self.target, weights=self.dir / d["train"]["weights"],
                                out=self.dir / "build" / self.target.name, trials=0, logs_dir=self.cfg["logs_dir"],
                                untuned=untuned, console=self.console)
        measured = {"searched": _measured(searched)}
        partial = self.state.setdefault("compile_partial", {})
        nets = d["baselines"]["nets"]
        with progress(self.console) as prog:
            bar = prog.add_task("compiling baselines", total=len(nets), completed=len(partial))
            for name, net in nets.items():
                if name in partial:
                    continue
                slug = Path(net["arch"]).stem.replace(".arch", "")
                m = compile_arch(self.dir / net["arch"], self.target, weights=self.dir / net["weights"],
                                 out=self.dir / "build" / "baselines" / slug, trials=0,
                                 logs_dir=self.cfg["logs_dir"], verify=False, untuned=untuned, console=self.console)
                partial[name] = _measured(m)
                _save(self.dir, self.state)
                prog.advance(bar)
        measured.update(partial)
        self.state.pop("compile_partial", None)
        out = self.dir / "build" / self.target.name
        return {"measured_us": measured, "manifest": self.rel(out / "manifest.json"),
                "module": self.rel(next(out.glob("model.*"), out / "model.so")), "onnx": self.rel(out / "model.onnx")}

    def _compare(self) -> dict:
        from .deploy import compare, is_host_like

        if not is_host_like(self.target):
            self.console.print(f"[yellow]{self.target.name} is not this machine: PyTorch / ONNX Runtime peers "
                               "are measured on the host only; skipped")
            return {"peers": []}
        d = self.state["done"]
        rows = compare([self.dir / d["search"]["arch"]], [self.target], baselines=True,
                       logs_dir=self.cfg["logs_dir"], trials=0, out=self.dir / "compare",
                       weights=[self.dir / d["train"]["weights"]], untuned=int(self.cfg["trials"]) == 0,
                       console=self.console)
        from .deploy import write_rows

        write_rows(rows, self.dir / "compare" / "compare.csv", self.dir / "compare" / "compare.json")
        return {"rows": rows}

    def _validate(self) -> dict:
        """The run's nets (searched and baselines) timed interleaved, against the table's predictions."""
        from .validate import validate

        d = self.state["done"]
        archs = [self.dir / d["search"]["arch"]] + [self.dir / n["arch"] for n in d["baselines"]["nets"].values()]
        doc = validate(self.space, self.target, n=0, archs=archs, logs_dir=self.cfg["logs_dir"],
                       out=self.dir / "validate", seed=int(self.cfg["seed"]), console=self.console)
        return {"result": self.rel(self.dir / "validate" / "validate.json"), "summary": doc["summary"]}

    def _report(self) -> dict:
        from .report import render_report

        atomic_write_json(self.dir / "summary.json", self.summary())
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
        nets = [{"name": "searched", "kind": "searched", "ops": d["search"]["ops"], "accuracy": d["train"]["accuracy"],
                 "predicted_us": d["search"]["predicted_us"], "measured_us": measured.get("searched"),
                 "compile_measured_us": measured.get("searched"), **checked.get(tuple(d["search"]["ops"]), {})}]
        for name, n in d["baselines"]["nets"].items():
            nets.append({"name": name, "kind": n["kind"], "ops": n["ops"], "accuracy": n["accuracy"],
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
                     "predicted_us": arch["predicted_latency_us"], "path": d["search"]["arch"]},
            "latency_table": {"path": d["profile"]["table"],
                              "blocks": [[float(x) for x in v] for v in table.block_matrix(self.space)],
                              "fixed_us": table.fixed_latency(self.space)},
            "nets": nets,
            "peers": _peers(d.get("compare", {}).get("rows", [])),
            "validation": self._validation(),
            "stages": [{"name": s, "seconds": d[s]["seconds"], "status": "done"} for s in STAGES if s in d],
            "artifacts": {"latency table": d["profile"]["table"], "architecture": d["search"]["arch"],
                          "weights": d["train"]["weights"], "onnx": d["compile"]["onnx"],
                          "module": d["compile"]["module"], "manifest": d["compile"]["manifest"],
                          "comparison": "compare/compare.csv", "validation": "validate/validate.json",
                          "report": "report/index.html"},
        }

    def _validated(self) -> dict[tuple, dict]:
        """ops -> the interleaved measurement of that net by the validate stage (median, quartiles, stable).

        It replaces the compile stage's figure (kept as ``compile_measured_us``): that one timed each net alone.
        """
        v = self.state["done"].get("validate")
        if not v:
            return {}
        doc = read_json(self.dir / v["result"], "validation result")
        return {tuple(r["ops"]): {"measured_us": r["measured_us"], "measured_q1": r["measured_q1"],
                                  "measured_q3": r["measured_q3"], "stable": r["stable"]} for r in doc["nets"]}

    def _validation(self) -> dict | None:
        v = self.state["done"].get("validate")
        return None if not v else {"summary": v["summary"], "result": v["result"],
                                   "figure": str(Path(v["result"]).parent / "validate.png")}


def _measured(manifest: dict) -> float | None:
    return manifest.get("measured_latency_us")


def _peers(rows: list[dict]) -> list[dict]:
    """Compare rows (one per net x runtime) -> one dict per net with each runtime's median."""
    keys = {"tvm": "tvm_us", "tvm-untuned": "tvm_untuned_us", "pytorch": "pytorch_us",
            "onnxruntime": "onnxruntime_us"}
    nets: dict[str, dict] = {}
    for r in rows:
        net = nets.setdefault(r.get("architecture", "?"), {"net": r.get("architecture", "?")})
        k = keys.get(r.get("runtime"))
        if k:
            net[k] = r.get("measured_us")
    return list(nets.values())
