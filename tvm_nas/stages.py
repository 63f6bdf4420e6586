"""The stages of ``tvm-nas run``, one class each: what it reads, the files it leaves and its ``run()``.

:data:`PIPELINE` is the order they run in. The runner (:mod:`tvm_nas.run`) derives everything else from these
declarations: which stages to run, the sha256 of each file a stage leaves (a file missing or changed on ``--resume``
redoes that stage and every later one), the model ``run.json``'s entry of each stage is read back with, and the
artifact list of the run's summary. Adding a stage means writing one class and listing it in :data:`PIPELINE`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

from . import records
from .console import fmt_us, progress
from .errors import TvmNasError

if TYPE_CHECKING:
    from .profile.model import LatencyModel

N_MATCHED = 3  # random nets of the searched net's latency, trained alike: the baseline the search must beat
MATCH = 0.05  # "matched": measured (else predicted) latency within ±5% of the searched net's
RIVALS = 8  # nets of about the budget's predicted latency timed beside the searched net, to match by measurement
RIVALS_SPAN = 0.15  # "about": predicted within ±15% of the budget (the table errs by a few percent either way)
LEGACY_REFERENCE = "mobilenetv2 (all k3_e6)"  # the reference net's name in runs before it had one name


class Stage:
    """One stage of the run. A subclass declares:

    - ``name``: its name in ``run.json``, ``--stop-after`` and the summary;
    - ``needs``: the earlier stages whose results its ``run()`` reads;
    - ``files``: the fields of its result that name a file it leaves for later stages (relative to the run folder),
      each with what the file is in the summary's artifact list ("" for a file that is not listed there);
    - ``record``: the model (:mod:`tvm_nas.records`) its entry of ``run.json`` is read back with;
    - ``run(ctx)``: does the work in the run ``ctx`` (:class:`~tvm_nas.run.Run`) and returns its result, the
      JSON-able dict ``run.json`` records (the runner adds ``seconds`` and ``artifacts``).
    """

    name: ClassVar[str]
    needs: ClassVar[tuple[str, ...]] = ()
    files: ClassVar[dict[str, str]] = {}
    record: ClassVar[type[records.StageDone]] = records.StageDone

    def run(self, ctx) -> dict:
        raise NotImplementedError

    @classmethod
    def outputs(cls, result: dict) -> dict[str, str]:
        """The files a finished stage left: path (relative to the run folder) -> what it is ("": not listed)."""
        return {result[k]: what for k, what in cls.files.items() if isinstance(result.get(k), str)}


class Profile(Stage):
    """The latency table of the space on the target, copied into the run with its fitted models, and the budget."""

    name = "profile"
    files = {"table": "latency table"}
    record = records.ProfileDone

    def run(self, ctx) -> dict:
        from .profile import profile
        from .profile.model import LatencyModel

        cfg = ctx.cfg
        measured = profile(ctx.space, ctx.target, trials=cfg.profile_trials, time_budget=cfg.time_budget,
                           logs_dir=cfg.logs_dir, seed=cfg.seed, console=ctx.console)
        # with what an earlier validate fitted to it: the run predicts what the rest of the product does
        table = LatencyModel.load(measured.path, space=ctx.space, target=ctx.target).copy_to(ctx.dir / "table")
        fast, slow = table.extremes(ctx.space)
        lo, hi = table.predict(ctx.space, fast), table.predict(ctx.space, slow)
        budget = cfg.latency_ms * 1000 if cfg.latency_ms else (lo + hi) / 2
        ctx.console.print(f"fastest net {fmt_us(lo, 'µs')}, slowest {fmt_us(hi, 'µs')} -> budget "
                          f"{fmt_us(budget, 'µs')}" + ("" if cfg.latency_ms else " (halfway)"))
        if budget < lo:
            ctx.console.print(f"[bold red]warning:[/] the budget {fmt_us(budget, 'µs')} is below the fastest net of "
                              f"the space ({fmt_us(lo, 'µs')}): no architecture can meet it; the searched net is "
                              "marked over budget")
        return {"table": ctx.rel(table.path), "fastest_us": lo, "slowest_us": hi, "budget_us": budget,
                "fastest_ops": fast, "slowest_ops": slow}


class Search(Stage):
    name = "search"
    needs = ("profile",)
    files = {"arch": "architecture"}
    record = records.SearchDone

    def run(self, ctx) -> dict:
        from .search import ProxylessSearch
        from .search.distributed import Dist

        conf = ctx.cfg.search(ctx.done["profile"]["budget_us"])
        out = ctx.dir / "search"
        s = ProxylessSearch(ctx.space, ctx.table(), ctx.data(), conf, out, console=ctx.console,
                            dist=Dist(device=ctx.device()))
        s.fit(resume=(out / "checkpoint.pt").exists())
        doc, matched, pool = s.arch_, None, None
        if ctx.cfg.measure_budget and conf.enforce_budget:
            from .search.measured import settle_search

            budget, table = conf.latency_budget_us, s.table  # the table the search derived with
            rivals = rival_pool(ctx.space, table, budget, RIVALS, ctx.cfg.seed + 1)
            got, timed = settle_search(s, ctx.target, ctx.cfg.logs_dir, ctx.cfg.seed, ctx.console, also=rivals)
            if got is not None:
                doc = got
                pool = rivals_timed(ctx.space, doc, timed)
                matched = matched_by_measurement(pool, _measured_us(doc), N_MATCHED, ctx.cfg.seed + 1)
                ctx.console.print("random nets of its measured latency, to train alike: " + "; ".join(
                    f"{' '.join(m['ops'])} ({fmt_us(m['measured_us'], 'µs')})" for m in matched))
        return {"arch": ctx.rel(s.arch_path_), "predicted_us": doc["predicted_latency_us"], "ops": doc["ops"],
                "measured_us": _measured_us(doc), "matched": matched, "rivals": pool}


class Train(Stage):
    name = "train"
    needs = ("search",)
    files = {"weights": "weights"}
    record = records.TrainDone

    def run(self, ctx) -> dict:
        from .train import train_arch

        res = train_arch(ctx.dir / ctx.done["search"]["arch"], ctx.cfg.data, ctx.cfg.train(), ctx.dir / "train",
                         init_from=ctx.dir / "search", console=ctx.console, device=ctx.device(),
                         test_data=ctx.cfg.test_data)
        return {"weights": ctx.rel(ctx.dir / "train" / "model.pt"), **accuracies(res)}


class Baselines(Stage):
    """The reference net, the space's fastest and slowest, and random nets of the searched net's latency, each
    trained as the searched net was; then the supernet's ranking of them all."""

    name = "baselines"
    needs = ("profile", "search", "train")
    record = records.BaselinesDone

    @classmethod
    def outputs(cls, result: dict) -> dict[str, str]:
        return {n[k]: "" for n in result.get("nets", {}).values() for k in ("arch", "weights")}

    def nets(self, ctx) -> dict[str, tuple[str, list[str]]]:
        """name -> (kind, ops) of each baseline."""
        from .arch import reference_arch

        prof = ctx.done["profile"]
        nets = {"fastest": ("fastest", prof["fastest_ops"]), "slowest": ("slowest", prof["slowest_ops"])}
        try:
            ref = reference_arch(ctx.space)
            nets = {ref.label: ("reference", ref.ops), **nets}
        except TvmNasError:
            pass
        searched = ctx.done["search"]
        if searched.get("matched"):  # chosen by measurement beside the searched net
            picks = [m["ops"] for m in searched["matched"]]
        else:  # by the table, where the target could not be timed from here
            picks = matched_nets(ctx.space, ctx.table(), searched["ops"], searched["predicted_us"], N_MATCHED,
                                 ctx.cfg.seed + 1)
        for i, ops in enumerate(picks):
            nets[f"matched-{i + 1}"] = ("matched", ops)
        return nets

    def run(self, ctx) -> dict:
        from .arch import arch_document, write_arch
        from .train import train_arch

        table, nets = ctx.table(), self.nets(ctx)
        done = ctx.state.setdefault("baselines_partial", {})
        for old, net in list(done.items()):  # a reference trained under its earlier name is not trained again
            if old == LEGACY_REFERENCE and net["kind"] == "reference":
                done.update({k: net for k, (kind, _) in nets.items() if kind == "reference"})
                done.pop(old)
        with progress(ctx.console) as prog:
            bar = prog.add_task("training baselines", total=len(nets), completed=len(done))
            for name, (kind, ops) in nets.items():
                if name in done:
                    continue
                slug = name.split(" ")[0]
                arch = write_arch(ctx.dir / "baselines" / f"{slug}.arch.json",
                                  arch_document(ctx.space, ops, None, table))
                res = train_arch(arch, ctx.cfg.data, ctx.cfg.train(), ctx.dir / "baselines" / slug,
                                 device=ctx.device(), test_data=ctx.cfg.test_data)
                done[name] = {"kind": kind, "ops": ops, "arch": ctx.rel(arch), **accuracies(res),
                              "weights": ctx.rel(ctx.dir / "baselines" / slug / "model.pt"),
                              "predicted_us": table.predict(ctx.space, ops)}
                ctx.save()
                prog.advance(bar)
        out = {"nets": dict(done), "supernet": self.supernet_ranking(ctx, done)}
        ctx.state.pop("baselines_partial", None)
        return out

    @staticmethod
    def supernet_ranking(ctx, nets: dict) -> dict:
        """Each trained net's accuracy with the supernet's shared weights, and its Kendall τ against the accuracy
        trained alone (test set when there is one): the search's own warning light."""
        from .search.ranking import kendall_tau, load_supernet, supernet_accuracies

        d = ctx.done
        alone = {"searched": d["train"]["accuracy"], **{k: n["accuracy"] for k, n in nets.items()}}
        ops = {"searched": d["search"]["ops"], **{k: n["ops"] for k, n in nets.items()}}
        conf = ctx.cfg.search(d["profile"]["budget_us"])
        shared = supernet_accuracies(load_supernet(ctx.space, ctx.dir / "search"), ctx.data(), ops,
                                     conf.val_fraction, conf.seed)
        names = [k for k in ops if alone.get(k) is not None]
        tau = kendall_tau([shared[k] for k in names], [alone[k] for k in names])
        line = (f"supernet ranking: Kendall τ {tau:+.2f} between the {len(names)} nets' accuracy with the shared "
                f"weights and trained alone ({d['train']['accuracy_set']})")
        if not tau > 0.3:
            line += ("; [bold yellow]the supernet barely ranks these nets: the searched net may be chosen by "
                     "noise (longer search, or a higher --arch-lr)[/]")
        ctx.console.print(line)
        return {"tau": None if tau != tau else round(tau, 4), "nets": len(names), "accuracy_set":
                d["train"]["accuracy_set"], "shared_accuracy": shared}


class Compile(Stage):
    """The searched net and the baselines, built with the target's database, then timed interleaved."""

    name = "compile"
    needs = ("search", "train", "baselines")
    files = {"onnx": "onnx", "module": "module", "manifest": "manifest"}
    record = records.CompileDone

    def run(self, ctx) -> dict:
        from .deploy import compile_arch
        from .deploy.compile import LIBRARY, ONNX_FILE, time_builds

        untuned = ctx.cfg.profile_trials == 0 and ctx.cfg.time_budget is None  # no database: default schedules
        table, builds = ctx.table(), ctx.builds()
        common = dict(trials=0, logs_dir=ctx.cfg.logs_dir, measure=False, untuned=untuned, console=ctx.console,
                      table=table)
        searched = builds["searched"]
        compile_arch(searched.arch, ctx.target, weights=searched.weights, out=searched.build_dir, **common)
        partial = ctx.state.setdefault("compile_partial", {})
        with progress(ctx.console) as prog:
            bar = prog.add_task("compiling baselines", total=len(builds) - 1, completed=len(partial))
            for name, b in builds.items():
                if name == "searched" or name in partial:
                    continue
                compile_arch(b.arch, ctx.target, weights=b.weights, out=b.build_dir, verify=False, **common)
                partial[name] = "built"
                ctx.save()
                prog.advance(bar)
        # timed together, as validate and compare time them: one module alone in its own minute of the machine's
        # life is not comparable with the next one alone in another
        measured = time_builds(builds, ctx.target, console=ctx.console)
        ctx.state.pop("compile_partial", None)
        out = searched.build_dir
        return {"measured_us": measured, "manifest": ctx.rel(out / "manifest.json"),
                "module": ctx.rel(out / LIBRARY), "onnx": ctx.rel(out / ONNX_FILE)}


class Compare(Stage):
    """The searched and the reference net against their peers, reusing the compile stage's builds."""

    name = "compare"
    needs = ("search", "train", "baselines", "compile")
    files = {"csv_file": "comparison", "json_file": ""}
    record = records.CompareDone

    def run(self, ctx) -> dict:
        from .deploy import is_host_like, write_rows
        from .deploy.compare import compare_built, compare_table

        if not is_host_like(ctx.target):
            ctx.console.print(f"[yellow]{ctx.target.name} is not this machine: PyTorch / ONNX Runtime peers "
                              "are measured on the host only; skipped")
            return {"peers": []}
        builds = ctx.builds()
        built = [builds["searched"]]
        built += [builds[name] for name, n in ctx.done["baselines"]["nets"].items() if n["kind"] == "reference"][:1]
        rows = compare_built(built)
        csv, js = ctx.dir / "compare" / "compare.csv", ctx.dir / "compare" / "compare.json"
        write_rows(rows, csv, js)
        ctx.console.print(compare_table(rows))  # what `tvm-nas compare --baselines` shows
        return {"rows": rows, "csv_file": ctx.rel(csv), "json_file": ctx.rel(js)}

    @classmethod
    def outputs(cls, result: dict) -> dict[str, str]:
        if "csv_file" not in result and result.get("rows"):  # recorded before the stage named its files
            return {"compare/compare.csv": "comparison", "compare/compare.json": ""}
        return super().outputs(result)


class Validate(Stage):
    """The run's nets (searched and baselines) timed interleaved against the run's own table, reusing the compile
    stage's builds; a fitted model it earns is written beside that copy, not into --logs-dir."""

    name = "validate"
    needs = ("profile", "search", "train", "baselines", "compile")
    files = {"result": "validation"}
    record = records.ValidateDone

    def run(self, ctx) -> dict:
        from .deploy.validate import validate

        builds = ctx.builds()  # each net under the run's name for it: validate's rows carry those names
        doc = validate(ctx.space, ctx.target, n=0, archs=[b.arch for b in builds.values()],
                       logs_dir=ctx.cfg.logs_dir, out=ctx.dir / "validate", seed=ctx.cfg.seed,
                       console=ctx.console, model=ctx.table(), built=list(builds.values()))
        return {"result": ctx.rel(ctx.dir / "validate" / "validate.json"), "summary": doc["summary"]}


class Report(Stage):
    """``summary.json`` from every stage's result, and the static page drawn from it."""

    name = "report"
    needs = ("profile", "search", "train", "baselines", "compile", "compare", "validate")
    files = {"page": "report"}
    record = records.ReportDone

    @classmethod
    def outputs(cls, result: dict) -> dict[str, str]:
        # known before the page is drawn: the summary it draws from lists it
        return {result.get("page", "report/index.html"): "report"}

    def run(self, ctx) -> dict:
        from .report import render_report, write_summary

        write_summary(ctx.dir, ctx.summary())
        return {"page": ctx.rel(render_report(ctx.dir))}


PIPELINE: tuple[type[Stage], ...] = (Profile, Search, Train, Baselines, Compile, Compare, Validate, Report)
STAGES = tuple(s.name for s in PIPELINE)
BY_NAME = {s.name: s for s in PIPELINE}
for _i, _s in enumerate(PIPELINE):  # a stage reads only what an earlier stage wrote
    if not set(_s.needs) <= set(STAGES[:_i]):
        raise TypeError(f"stage {_s.name!r} needs {sorted(set(_s.needs) - set(STAGES[:_i]))}, not run before it")

RunState = records.run_state_model([(s.name, s.record) for s in PIPELINE])


def load_run_state(path: str | os.PathLike) -> dict:
    """A run's ``run.json``, checked as :data:`RunState` (each finished stage's result by its stage's ``record``,
    the stages done in order); the file's object."""
    return records.load_record(path, RunState, "run state")[1]


# -- what the stages share --------------------------------------------------------------------------------------
def accuracies(res: dict) -> dict:
    """The accuracy a net is judged by and the set it comes from (older runs recorded validation only)."""
    from .train import accuracy_fields

    if "accuracy_set" in res:
        return {k: res.get(k) for k in ("accuracy", "accuracy_set", "val_accuracy", "test_accuracy")}
    val = res.get("val_accuracy", res.get("accuracy"))
    return {**accuracy_fields({"val_accuracy": val, "test_accuracy": res.get("test_accuracy")}),
            "val_accuracy": val, "test_accuracy": res.get("test_accuracy")}


def _distinct_nets(space, rng, exclude: Sequence[str] = ()) -> list[list[str]]:
    """Every net of the space once in its canonical spelling (spaces of up to 20,000 nets are enumerated; larger
    ones sampled, 20,000 draws), never `exclude` under any spelling."""
    import itertools
    import math

    from .space import canonical_ops

    blocks = space.blocks()
    if math.prod(len(b.candidates) for b in blocks) <= 20_000:
        pool = [list(ops) for ops in itertools.product(*(b.candidates for b in blocks))]
    else:
        pool = [[str(rng.choice(b.candidates)) for b in blocks] for _ in range(20_000)]
    seen, nets = {tuple(canonical_ops(space, exclude))} if exclude else set(), []
    for ops in pool:
        c = tuple(canonical_ops(space, ops))
        if c not in seen:
            seen.add(c)
            nets.append(list(c))
    return nets


def _random_near(rng, gaps: list[tuple[list[str], float]], span: float, n: int) -> list[list[str]]:
    """`n` of the nets whose gap is within `span`, drawn at random; when fewer are, the nearest complete them."""
    within = [ops for ops, gap in gaps if gap <= span]
    picks = [within[i] for i in rng.permutation(len(within))[:n]]
    if len(picks) < n:
        rest = sorted((gap, i) for i, (ops, gap) in enumerate(gaps) if gap > span)
        picks += [gaps[i][0] for _, i in rest[:n - len(picks)]]
    return picks


def matched_nets(space, table: LatencyModel, searched: list[str], target_us: float, n: int,
                 seed: int) -> list[list[str]]:
    """``n`` random nets other than ``searched`` whose predicted latency is within ±:data:`MATCH` of
    ``target_us``; when the space has fewer, the nearest in latency complete the list (the run's matching where
    the target cannot be timed from here; else :func:`matched_by_measurement`)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    gaps = [(ops, abs(table.predict(space, ops) - target_us) / target_us)
            for ops in _distinct_nets(space, rng, searched)]
    return _random_near(rng, gaps, MATCH, n)


def rival_pool(space, table: LatencyModel, budget_us: float, n: int, seed: int) -> list[list[str]]:
    """``n`` random nets whose predicted latency is within ±:data:`RIVALS_SPAN` of the budget (the nearest
    complete them): timed beside the nets derived around the budget, they are the pool the searched net's
    matched-latency rivals are drawn from once its measured latency is known."""
    import numpy as np

    rng = np.random.default_rng(seed)
    gaps = [(ops, abs(table.predict(space, ops) - budget_us) / budget_us) for ops in _distinct_nets(space, rng)]
    return _random_near(rng, gaps, RIVALS_SPAN, n)


def rivals_timed(space, doc: dict, timed: dict[tuple, dict]) -> list[dict]:
    """The nets timed beside the searched one (``doc``): the rival pool `timed` and the nets derived around the
    budget, each once in its canonical spelling, never the searched net; each ``{ops, measured_us}``."""
    from .space import canonical_ops

    medians = {tuple(canonical_ops(space, ops)): t["median"] for ops, t in timed.items()}
    medians.update({tuple(canonical_ops(space, r["ops"])): r["measured_us"] for r in doc["derivation"]["measured"]})
    medians.pop(tuple(canonical_ops(space, doc["ops"])), None)
    return [{"ops": list(ops), "measured_us": m} for ops, m in sorted(medians.items())]


def matched_by_measurement(pool: list[dict], measured_us: float, n: int, seed: int) -> list[dict]:
    """``n`` random nets of `pool` (:func:`rivals_timed`) whose measured median is within ±:data:`MATCH` of
    `measured_us`, the searched net's; when fewer are, the nearest by measurement complete them."""
    import numpy as np

    gaps = [(r["ops"], abs(r["measured_us"] - measured_us) / measured_us) for r in pool]
    picks = _random_near(np.random.default_rng(seed), gaps, MATCH, n)
    return [next(r for r in pool if r["ops"] == ops) for ops in picks]


def _measured_us(doc: dict) -> float | None:
    """The measured median of an architecture document's own net, when it was chosen by measurement."""
    from .search.measured import kept_row

    return (kept_row(doc) or {}).get("measured_us")
