"""``tvm-nas compile``: an architecture -> ONNX + Relax -> the target's tuning database (tune what it lacks)
-> build, export, verify and measure -> ``model.so``, ``model.onnx`` and ``manifest.json`` in one folder.

Every network goes through the same lowering pipeline as the latency profile (:mod:`tvm_nas.backend.pipeline`),
so the kernels the profile tuned are found in the target's database and reused, not tuned again.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console

from ..arch import Arch, load_architecture
from ..console import NA, fmt_duration, fmt_ratio, fmt_timing, fmt_us, over_budget, parse_duration
from ..errors import TvmNasError
from ..io import DEFAULT_LOGS_DIR, atomic_write_json, remove_orphans, sha256_file
from ..profile.model import LatencyModel, chosen
from ..profile.table import table_path
from ..space import SearchSpace
from ..targets import TargetSpec, load_target
from .model import build_network_from_arch, example_input, torch_forward
from .onnx import ATOL, export_onnx

SCHEMA = 1
LIBRARY, ONNX_FILE, MANIFEST = "model.so", "model.onnx", "manifest.json"


@dataclass
class TaskReport:
    """How the network's kernels were scheduled: reused from the database, newly tuned, or left untuned."""

    total: int = 0
    reused: list[str] = field(default_factory=list)
    tuned: list[str] = field(default_factory=list)
    untuned: list[str] = field(default_factory=list)
    time_budget_s: float | None = None  # compile --time-budget: this net's own tuning time
    tuning_s: float | None = None  # what this compile spent tuning (None: it tuned nothing)

    def to_json(self) -> dict:
        out = {"total": self.total, "reused": len(self.reused), "tuned": len(self.tuned),
               "untuned": len(self.untuned), "tasks": {"reused": self.reused, "tuned": self.tuned,
                                                       "untuned": self.untuned}}
        if self.time_budget_s is not None:
            out["time_budget_s"] = self.time_budget_s
        if self.tuning_s is not None:
            out["tuning_seconds"] = round(self.tuning_s, 1)
        return out


@dataclass
class Built:
    """A compiled architecture: its build folder holds ``model.so``, ``model.onnx`` and ``manifest.json`` (what
    :func:`compile_arch` wrote), built with `weights` (None: the seeded random weights)."""

    arch: Arch
    spec: TargetSpec
    weights: str | os.PathLike | None
    build_dir: Path


def has_database(logs_dir: str | os.PathLike, spec: TargetSpec) -> bool:
    return (Path(logs_dir) / spec.name / "database_workload.json").is_file()


def _table(logs_dir, spec: TargetSpec, space: SearchSpace) -> LatencyModel | None:
    path = table_path(logs_dir, spec.name, space.name)
    return LatencyModel.load(path, space=space, target=spec) if path.is_file() else None


def check_inputs(a: Arch, spec: TargetSpec, logs_dir, trials: int, untuned: bool, measure: bool,
                 table: LatencyModel | None = None, time_budget_s: float | None = None) -> None:
    """Every check that can fail on bad input, before anything is written (`table`: the model that will predict
    the net; None: the one under `logs_dir`)."""
    from ..backend.target import is_gpu

    if trials < 0:
        raise TvmNasError(f"--trials must be >= 0, got {trials}")
    if time_budget_s is not None and untuned:
        raise TvmNasError("--time-budget tunes into the target's database, which --untuned ignores: pass one of them")
    tunes = trials > 0 or time_budget_s is not None
    spec.check_cross_compiler()
    if table is None:
        table = _table(logs_dir, spec, a.space)  # refuses a table of another space definition or target
    untuned_table = table is not None and table.meta.get("settings", {}).get("trials") == 0
    if not untuned and not tunes and not has_database(logs_dir, spec) and not untuned_table:
        raise TvmNasError(
            f"target '{spec.name}' has no tuning database in {Path(logs_dir) / spec.name}; run: tvm-nas profile "
            f"--space {a.space.name} --target {spec.name} --trials 500 --logs-dir {logs_dir} (or pass --trials N "
            f"to tune this network here, or --untuned for TVM's default schedules)")
    if measure and spec.is_rpc:
        from ..backend.remote import check_tracker

        try:
            check_tracker(spec)
        except TvmNasError as e:
            raise TvmNasError(f"{e} (or pass --no-measure to compile and export only)") from None
    if is_gpu(spec) and tunes and not spec.is_rpc:
        from ..backend.library import cuda_device_present

        if not cuda_device_present():
            raise TvmNasError(f"target '{spec.name}': tuning needs a CUDA device and none is present; "
                              "use --trials 0 and no --time-budget")


def lower_network(model, a: Arch, onnx_path: Path | None, tvm_target, prepack: bool):
    from ..backend import pipeline

    if onnx_path is not None:
        mod = pipeline.import_onnx(onnx_path)
    else:
        mod = pipeline.import_torch(model, a.input_shape)
    return pipeline.lower(mod, tvm_target, prepack)


def schedule_tasks(fused, spec: TargetSpec, logs_dir, trials: int, seed: int = 0, untuned: bool = False,
                   console: Console | None = None, time_budget_s: float | None = None):
    """Apply the target's database: reuse every task it has records for, tune the rest with `trials`.

    With `time_budget_s`, every task of this net is tuned further for that long (`trials`, when above 0, caps
    the trials): each round goes to the kernel with the largest share of this net's time, the records already in
    the database counting as rounds done, so the time goes where this net spends it rather than over a whole
    space as ``profile`` spreads it. The time is kept in the database's ledger under this net's kernels: the same
    call again finds it spent and tunes nothing more.

    Returns:
        ``(database or None, TaskReport)``.
    """
    from ..backend import tuning
    from ..backend.target import to_tvm_target

    tvm_target = to_tvm_target(spec)
    tasks = tuning.dedup({"net": tuning.extract_tasks(fused, tvm_target)})
    report = TaskReport(total=len(tasks))
    if untuned:
        report.untuned = [f"{t.name}#{k}" for k, t in tasks.items()]
        return None, report
    work_dir = Path(logs_dir) / spec.name
    db = tuning.open_database(work_dir, spec, create=trials > 0 or time_budget_s is not None)
    before = {k: tuning.records(db, t.mod) for k, t in tasks.items()}
    missing = {k: t for k, t in tasks.items() if before[k] == 0}
    to_tune = tasks if time_budget_s is not None else missing if trials > 0 else {}
    if to_tune:
        from ..backend.tuner import tune_budgeted

        if console:
            console.print(f"tuning this net's {len(to_tune)} tasks for {fmt_duration(time_budget_s)}, by their share "
                          "of its time" if time_budget_s is not None
                          else f"tuning the {len(to_tune)} tasks the database lacks ({trials} trials)")
        say = console.print if console else print

        def on_round(e):  # a budget of minutes is not spent in silence
            spent = f"; {fmt_duration(e.elapsed_s)} in, budget {fmt_duration(time_budget_s)}" if time_budget_s else ""
            say(f"  {e.describe()}{spent}")

        done = tune_budgeted(to_tune, spec, work_dir, trials=trials or None, time_budget_s=time_budget_s, seed=seed,
                             say=say, on_round=on_round)
        report.time_budget_s, report.tuning_s = time_budget_s, done.seconds if done.rounds else None
        if not done.rounds and console:
            console.print(f"no tuning round ran: {done.why_ended}")
        db = tuning.open_database(work_dir, spec)
    after = {k: tuning.records(db, t.mod) for k, t in tasks.items()}
    for k, t in tasks.items():
        name = f"{t.name}#{k}"
        (report.tuned if after[k] > before[k] else report.reused if after[k] else report.untuned).append(name)
    return db, report


def build_module(fused, spec: TargetSpec, db):
    from ..backend.library import cuda_build_env
    from ..backend.pipeline import build
    from ..backend.target import is_gpu, to_tvm_target

    gpu = is_gpu(spec)
    if gpu:
        with cuda_build_env():
            return build(fused, to_tvm_target(spec), db, gpu=True, prepack=False)
    return build(fused, to_tvm_target(spec), db, gpu=False, prepack=True)


def _export(exe, path: Path, spec: TargetSpec) -> Path:
    from ..backend import measure
    from ..backend.library import cuda_build_env
    from ..backend.target import is_gpu

    if is_gpu(spec):
        with cuda_build_env():
            return measure.export(exe, path, spec)
    return measure.export(exe, path, spec)


def _library_kind(spec: TargetSpec, tvm_target) -> str:
    kind = tvm_target.kind.name
    if kind == "cuda":
        return f"shared library with CUDA kernels (nvcc, {tvm_target.attrs.get('arch', '?')})"
    triple = str(tvm_target.attrs.get("mtriple", "") or platform.machine())
    if spec.cross_compiler:
        return f"shared library for {triple}, cross-linked with {spec.cross_compiler}"
    return f"shared library for {triple}"


def verify_library(library: str | os.PathLike, spec: TargetSpec, x: np.ndarray, expected: np.ndarray,
                   atol: float = ATOL) -> dict:
    """Run the shipped library where this machine can and compare with PyTorch's outputs.

    Host (x86) libraries are loaded with ``tvm.runtime.load_module``; aarch64 ones run under qemu-aarch64 with
    TVM's aarch64 runtime. Returns ``{"status": "passed"|"skipped", "how", "max_abs_err"}``.

    Raises:
        TvmNasError: the outputs differ by more than `atol` (the shipped module is wrong).
    """
    from ..backend.target import is_gpu, to_tvm_target

    tvm_target = to_tvm_target(spec)
    triple = str(tvm_target.attrs.get("mtriple", "") or "")
    compiler = spec.cross_compiler or "aarch64-linux-gnu-g++"
    if is_gpu(spec):
        return {"status": "skipped", "how": "CUDA modules run only on the device (checked by the measurement run)"}
    if triple.startswith("aarch64") or "aarch64" in (spec.cross_compiler or ""):
        from ..backend import aarch64

        missing = aarch64.missing_tools(compiler)
        if missing:
            return {"status": "skipped", "how": f"{', '.join(missing)} not installed ({aarch64.APT_HINT})"}
        y, how = aarch64.run(library, x, compiler), "qemu-aarch64 with TVM's aarch64 runtime"
    elif spec.cross_compiler:
        return {"status": "skipped", "how": f"no emulator for {triple or spec.cross_compiler}"}
    else:
        from ..backend.library import run_library

        y, how = run_library(library, x, spec.threads), "tvm.runtime.load_module on this machine"
    err = float(np.abs(y.reshape(expected.shape) - expected).max())
    if not err <= atol:  # NaN fails too
        raise TvmNasError(f"{library}: the exported module's outputs differ from PyTorch's by {err:.2e} "
                          f"(> {atol}) ({how})")
    return {"status": "passed", "how": how, "max_abs_err": err}


def unmeasurable(spec: TargetSpec) -> str | None:
    """Why a module of this target cannot be timed from here, or None."""
    from ..backend.library import cuda_device_present
    from ..backend.target import is_gpu

    if is_gpu(spec) and not spec.is_rpc and not cuda_device_present():
        return "not measured: no CUDA device on this machine"
    if spec.cross_compiler and not spec.is_rpc:
        return "not measured: a cross target needs its RPC runner"
    return None


def _check_device_outputs(spec: TargetSpec, outs, expected: np.ndarray, label: str = "the module") -> float:
    err = float(np.abs(outs[0].reshape(expected.shape) - expected).max())
    if not err <= ATOL:  # NaN fails too
        raise TvmNasError(f"target '{spec.name}': {label}'s outputs on the device differ from PyTorch's by "
                          f"{err:.2e} (> {ATOL})")
    return err


def _how(spec: TargetSpec, t, err: float, others: int = 0) -> str:
    return (f"time_evaluator on {t.where}: median and quartiles of {t.count} samples over {t.rounds} rounds "
            f"(round medians {'agree' if t.stable else 'DISAGREE: UNSTABLE'} within the protocol's tolerance), each "
            f"the mean of >= {t.number} runs filling {spec.evaluator.min_repeat_ms} ms"
            + (f", rounds interleaved with {others} other module(s)" if others else "")
            + f"; outputs checked on the device (max abs err {err:.1e})")


def _measure(exe, spec: TargetSpec, x: np.ndarray, expected: np.ndarray) -> tuple[dict | None, str]:
    from ..backend import measure

    why = unmeasurable(spec)
    if why:
        return None, why
    outs, t = measure.run_and_time(exe, [x], spec)
    err = _check_device_outputs(spec, outs, expected)
    return t.to_json(), _how(spec, t, err)


def load_checked(builds: Mapping[str, Built], spec: TargetSpec, sess, seed: int = 0) -> tuple[dict, dict]:
    """Load the libraries of finished builds on the target and check each one's outputs against PyTorch (one
    tolerance, :data:`~tvm_nas.deploy.onnx.ATOL`). The one way a built library is loaded for timing: compile's,
    validate's and the run's.

    Returns:
        (name -> loaded module, name -> max abs error).
    """
    from ..backend import measure

    loaded, errs = {}, {}
    for name, b in builds.items():
        x = example_input(b.arch.input_shape, seed)
        m = measure.load(Path(b.build_dir) / LIBRARY, [x], spec, sess)
        errs[name] = _check_device_outputs(spec, m.outputs(), torch_forward(
            build_network_from_arch(b.arch, b.weights, seed), x), f"net '{name}'")
        loaded[name] = m
    return loaded, errs


def time_builds(builds: Mapping[str, Built], target: str | os.PathLike | TargetSpec, seed: int = 0,
                console: Console | None = None) -> dict[str, float | None]:
    """Time the modules of several finished builds interleaved and record each figure in its manifest.

    Modules that will be compared are timed in interleaved rounds (A B C A B C ...), never one after the other:
    a machine that changes speed between two builds would otherwise show up as a difference between the nets.

    Args:
        builds: name -> a finished build of :func:`compile_arch`.
        target: the target they were built for (local or RPC runner).
        seed: the seed they were built with (random weights and the test input).

    Returns:
        name -> measured median (µs), None for each when the target cannot be timed from here.
    """
    from ..backend import measure
    from ..records import load_manifest

    console = console or Console(stderr=True)
    spec = load_target(target)
    why = unmeasurable(spec)
    manifests = {name: load_manifest(Path(b.build_dir) / MANIFEST) for name, b in builds.items()}
    loaded, errs = {}, {}
    with measure.target_session(spec) as sess:
        if not why:
            loaded, errs = load_checked(builds, spec, sess, seed)
            console.print(f"timing {len(loaded)} modules interleaved on {spec.name}")
        timings = measure.time_loaded(loaded, spec) if loaded else {}
        loaded.clear()
    result = {}
    for name, b in builds.items():
        out = b.build_dir
        t, m = timings.get(name), manifests[name]
        timing = t.to_json() if t else None
        predicted = m.get("predicted_latency_us")
        m.pop("measured_iqr_us", None)  # a manifest written before the timing was one object
        m.update(measured_latency_us=t.median if t else None,
                 measurement={"how": _how(spec, t, errs[name], len(builds) - 1) if t else why, **(timing or {})},
                 measured_over_predicted=t.median / predicted if t and predicted else None)
        atomic_write_json(Path(out) / MANIFEST, m)
        result[name] = m["measured_latency_us"]
        console.print(f"{name}: {_summary(m)}")
    return result


def compile_arch(arch: str | os.PathLike | Arch, target: str | os.PathLike | TargetSpec,
                 weights: str | os.PathLike | None = None, out: str | os.PathLike = "build",
                 trials: int = 0, logs_dir: str | os.PathLike = DEFAULT_LOGS_DIR, frontend: str = "torch",
                 seed: int = 0, measure: bool = True, verify: bool = True, untuned: bool = False,
                 console: Console | None = None, table: LatencyModel | None = None,
                 time_budget: str | float | None = None) -> dict:
    """Compile an architecture for one target into `out/`: ``model.so``, ``model.onnx`` and ``manifest.json``.

    Args:
        arch: an ``*.arch.json`` path or a loaded :class:`Arch`.
        target: a target name (``targets/``), YAML path or :class:`TargetSpec`.
        weights: trained weights; None: seeded random weights.
        out: output folder (created); existing files are replaced only after a successful build.
        trials: MetaSchedule budget for the tasks the target's database lacks (0: tune nothing).
        logs_dir: root of the per-target databases and latency tables.
        frontend: ``"torch"`` (torch.export) or ``"onnx"`` (the exported ONNX file) into Relax.
        seed: seed of random weights, of the test input and of tuning.
        measure: time the module on the target (locally or through its RPC tracker).
        verify: run the exported library on this machine (host, or qemu for aarch64) against PyTorch.
        untuned: ignore the database and compile TVM's default schedules.
        table: the latency model that predicts the net (a run's own copy); None: the table under `logs_dir`.
        time_budget: tune every kernel of this net further for this long ("20m" or seconds), by their share of
            its time, into the target's database (see :func:`schedule_tasks`).

    Returns:
        The manifest (also written to ``out/manifest.json``).
    """
    from ..backend.library import tvm_version
    from ..backend.target import is_gpu, to_tvm_target

    console = console or Console(stderr=True)
    if frontend not in ("torch", "onnx"):
        raise TvmNasError(f"--frontend must be 'torch' or 'onnx', got {frontend!r}")
    time_budget_s = parse_duration(time_budget)
    a, spec = load_architecture(arch), load_target(target)
    check_inputs(a, spec, logs_dir, trials, untuned, measure, table, time_budget_s)
    model = build_network_from_arch(a, weights, seed)
    out = Path(out)
    tvm_target, gpu = to_tvm_target(spec), is_gpu(spec)
    x = example_input(a.input_shape, seed)
    expected = torch_forward(model, x)

    # everything is built in a staging folder and moved in at the end: a crash never leaves a new library beside
    # an old manifest
    remove_orphans(out, ".build-", mine=True)  # staging folders of builds whose process is gone
    stage = out / f".build-{os.getpid()}"
    try:
        t0 = time.perf_counter()
        onnx_info = export_onnx(model, x, stage / ONNX_FILE)
        fused = lower_network(model, a, stage / ONNX_FILE if frontend == "onnx" else None, tvm_target,
                              prepack=not gpu)
        db, tasks = schedule_tasks(fused, spec, logs_dir, trials, seed, untuned, console, time_budget_s)
        console.print(f"[bold]{a.label or a.space.name}[/] on [bold]{spec.name}[/]: {tasks.total} tasks, "
                      f"{len(tasks.reused)} reused from the database, {len(tasks.tuned)} newly tuned, "
                      f"{len(tasks.untuned)} untuned")
        exe = build_module(fused, spec, db)
        lib = _export(exe, stage / LIBRARY, spec)
        compile_s = time.perf_counter() - t0

        checked = verify_library(lib, spec, x, expected) if verify else {"status": "skipped", "how": "--no-verify"}
        timing, how = _measure(exe, spec, x, expected) if measure else (None, "not measured: --no-measure")
        table = table if table is not None else _table(logs_dir, spec, a.space)
        predicted = _predict(table, a)
        manifest = _manifest(a, spec, tvm_target, weights, seed, frontend, x, expected, lib, onnx_info, tasks,
                             table, predicted, timing, how, checked, compile_s, tvm_version(), trials, untuned,
                             logs_dir)
        _install(stage, out, (ONNX_FILE, LIBRARY), manifest)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    console.print(_summary(manifest))
    return manifest


def _install(stage: Path, out: Path, files: tuple[str, ...], manifest: dict) -> None:
    """Move a finished build into `out`: the old manifest goes first and the new one comes last, so at every
    moment the folder's manifest (if any) describes the files beside it."""
    (out / MANIFEST).unlink(missing_ok=True)
    for name in files:
        os.replace(stage / name, out / name)
    atomic_write_json(out / MANIFEST, manifest)


def _predict(table: LatencyModel | None, a: Arch) -> float | None:
    try:
        return None if table is None else table.predict(a.space, a.ops)
    except TvmNasError:
        return None  # an op the profile has not measured


def _manifest(a, spec, tvm_target, weights, seed, frontend, x, y, lib, onnx_info, tasks, table, predicted,
              timing, how, checked, compile_s, tvm_v, trials, untuned, logs_dir) -> dict:
    measured = timing["median"] if timing else None
    return {
        "schema": SCHEMA,
        "architecture": {"file": str(a.path) if a.path else None, "label": a.label,
                         "sha256": sha256_file(a.path) if a.path else None, "space": a.space.name,
                         "space_hash": a.space.hash, "ops": a.ops,
                         "budget_us": (a.doc.get("derivation") or {}).get("budget_us")},
        "weights": {"file": str(weights), "sha256": sha256_file(weights)} if weights else {"random_seed": seed},
        "target": {"name": spec.name, "hash": spec.hash, "tvm": json.loads(str(tvm_target)),
                   "cross_compiler": spec.cross_compiler, "threads": spec.threads},
        "tvm_version": tvm_v,
        "frontend": "torch.export" if frontend == "torch" else "onnx",
        "input": {"name": "input", "shape": list(x.shape), "dtype": str(x.dtype), "layout": "NCHW"},
        "output": {"shape": list(y.shape), "dtype": str(y.dtype)},
        "library": {"file": lib.name, "sha256": sha256_file(lib), "bytes": lib.stat().st_size,
                    "kind": _library_kind(spec, tvm_target),
                    "load_with": "tvm.runtime.load_module(path) -> tvm.relax.VirtualMachine(lib, dev)['main']"},
        "onnx": onnx_info,
        "tuning": {"database": None if untuned or not has_database(logs_dir, spec)
                   else str(Path(logs_dir) / spec.name), "trials": trials, **tasks.to_json()},
        "compile_seconds": round(compile_s, 2),
        "verification": checked,
        "predicted_latency_us": predicted,
        "latency_table": None if table is None else table.manifest(),
        "measured_latency_us": measured,
        "measurement": {"how": how, **(timing or {})},
        "measured_over_predicted": measured / predicted if measured and predicted else None,
    }


def _summary(m: dict) -> str:
    p, ms, r = m["predicted_latency_us"], m["measured_latency_us"], m["measured_over_predicted"]
    ratio = fmt_ratio(r)
    t = m["measurement"]
    measured = fmt_timing(ms, t.get("q1"), t.get("q3"), t.get("stable"), unit="µs") if ms is not None else NA
    lt = m.get("latency_table") or {}
    fitted = chosen(lt)
    how = fitted.label if fitted else "table"
    return (f"{m['target']['name']}: predicted {fmt_us(p, 'µs')} ({how}) vs measured {measured} → ratio {ratio}; "
            f"verification {m['verification']['status']} ({m['verification']['how']})") + over_budget(
        ms, t.get("q1") if ms is not None else None, (m.get("architecture") or {}).get("budget_us"))

