"""Deploy: architecture file -> standalone network -> ONNX + Relax -> tune what the database lacks -> compile,
export, verify and measure per target; compare architectures, targets and peers (PyTorch, ONNX Runtime).

Every network goes through the same lowering pipeline as the latency profile (:mod:`tvm_nas.backend.pipeline`),
so the kernels the profile tuned are found in the target's database and reused, not tuned again.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from .errors import TvmNasError
from .io import atomic_write_json, atomic_write_text, sha256_file
from .latency_table import LatencyTable, table_path
from .network import Network, reference_ops
from .ops import prepare_for_deploy
from .space import SearchSpace
from .targets import TargetSpec, load_target

SCHEMA = 1
ATOL = 1e-4
LIBRARY, ONNX_FILE, MANIFEST = "model.so", "model.onnx", "manifest.json"
REFERENCE_OP = "mbconv_k3_e6"


# -- architecture and network -----------------------------------------------------------------------------------
@dataclass
class Arch:
    """A loaded architecture: its space, one op per block, the file's content and where it came from."""

    space: SearchSpace
    ops: list[str]
    doc: dict
    path: Path | None = None
    label: str = ""

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        r = self.space.input.resolution
        return (1, self.space.input.channels, r, r)


def load_architecture(arch: str | os.PathLike | Arch) -> Arch:
    """Load an ``*.arch.json`` (refusing a changed or corrupted space definition, or ops outside the space)."""
    if isinstance(arch, Arch):
        return arch
    from .search.derive import load_arch

    space, ops, doc = load_arch(arch)
    path = Path(arch)
    return Arch(space, ops, doc, path, path.name.removesuffix(".json").removesuffix(".arch"))


def reference_arch(space: SearchSpace, op: str = REFERENCE_OP) -> Arch:
    """The reference net of a space: the same op in every block (default: the MobileNetV2 shape)."""
    from .search.derive import arch_document

    ops = reference_ops(space, op)
    return Arch(space, ops, arch_document(space, ops, None, None), None, f"reference ({op})")


def load_weights(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Load trained weights (a state dict, read with ``weights_only=True``) into an un-folded network.

    Raises:
        TvmNasError: unreadable file, or keys/shapes that do not match the architecture.
    """
    path = Path(path)
    if not path.is_file():
        raise TvmNasError(f"{path}: weights file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, unsupported globals, truncated files
        msg = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise TvmNasError(f"{path}: not a weights file torch.load(weights_only=True) can read ({msg[:160]})") from None
    for k in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(k), dict):
            state = state[k]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TvmNasError(f"{path}: expected a state dict of tensors (torch.save(model.state_dict(), ...))")
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
             if k in state and state[k].shape != v.shape]
    if missing or extra or wrong:
        parts = [f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
                 f"{len(extra)} unexpected (e.g. {extra[0]})" if extra else "",
                 f"{len(wrong)} of another shape (e.g. {wrong[0]})" if wrong else ""]
        raise TvmNasError(f"{path}: weights do not match the architecture: "
                          + ", ".join(p for p in parts if p) + "; were they trained for another architecture?")
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise TvmNasError(f"{path}: field '{bad[0]}': weights hold NaN or infinite values "
                          f"({len(bad)} tensor(s)); a net with them computes nothing")
    model.load_state_dict(state)


def build_network_from_arch(arch: str | os.PathLike | Arch, weights: str | os.PathLike | None = None,
                            seed: int = 0) -> torch.nn.Module:
    """The standalone network of an architecture, ready to deploy (eval mode, batch norm folded).

    Args:
        arch: an ``*.arch.json`` path or a loaded :class:`Arch`.
        weights: trained weights (state dict of :class:`~tvm_nas.network.Network`); None: seeded random weights.
        seed: seed of the random weights (and of the batch-norm statistics, so folding is not trivial).
    """
    a = load_architecture(arch)
    torch.manual_seed(seed)
    model = Network(a.space, a.ops, where=str(a.path or a.label))
    if weights is not None:
        load_weights(model, weights)
    else:
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.1, 0.1)
                    m.running_var.uniform_(0.5, 1.5)
    return prepare_for_deploy(model)


def example_input(shape: Sequence[int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(tuple(shape), dtype=np.float32)


def torch_forward(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


# -- ONNX ------------------------------------------------------------------------------------------------------
def export_onnx(model: torch.nn.Module, x: np.ndarray, path: str | os.PathLike, atol: float = ATOL) -> dict:
    """Export to ONNX (torch.export-based exporter), validate with ``onnx.checker`` and ONNX Runtime.

    Returns:
        ``{"file", "sha256", "opset", "max_abs_err"}`` (the error of ONNX Runtime against PyTorch).

    Raises:
        TvmNasError: the checker rejects the model, or ONNX Runtime's outputs differ from PyTorch's by > atol.
    """
    import contextlib

    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            torch.onnx.export(model, (torch.from_numpy(x),), str(tmp), dynamo=True, external_data=False,
                              input_names=["input"], output_names=["logits"], verbose=False)
        proto = onnx.load(str(tmp))
        onnx.checker.check_model(proto, full_check=True)
        err = float(np.abs(onnxruntime_forward(tmp, x) - torch_forward(model, x)).max())
        if not err <= atol:  # NaN fails too
            raise TvmNasError(f"{path}: ONNX Runtime's outputs differ from PyTorch's by {err:.2e} (> {atol})")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=None)
    return {"file": path.name, "sha256": sha256_file(path), "opset": opset, "max_abs_err": err}


def _ort_session(path, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def onnxruntime_forward(path: str | os.PathLike, x: np.ndarray) -> np.ndarray:
    sess = _ort_session(path)
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


# -- the compile stage -----------------------------------------------------------------------------------------
@dataclass
class TaskReport:
    """How the network's kernels were scheduled: reused from the database, newly tuned, or left untuned."""

    total: int = 0
    reused: list[str] = field(default_factory=list)
    tuned: list[str] = field(default_factory=list)
    untuned: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"total": self.total, "reused": len(self.reused), "tuned": len(self.tuned),
                "untuned": len(self.untuned), "tasks": {"reused": self.reused, "tuned": self.tuned,
                                                        "untuned": self.untuned}}


def has_database(logs_dir: str | os.PathLike, spec: TargetSpec) -> bool:
    return (Path(logs_dir) / spec.name / "database_workload.json").is_file()


def _table(logs_dir, spec: TargetSpec, space: SearchSpace) -> LatencyTable | None:
    path = table_path(logs_dir, spec.name, space.name)
    return LatencyTable.load(path, space=space, target_name=spec.name) if path.is_file() else None


def _check_inputs(a: Arch, spec: TargetSpec, logs_dir, trials: int, untuned: bool, measure: bool) -> None:
    """Every check that can fail on bad input, before anything is written."""
    from .backend.target import is_gpu

    if trials < 0:
        raise TvmNasError(f"--trials must be >= 0, got {trials}")
    spec.check_cross_compiler()
    table = _table(logs_dir, spec, a.space)  # refuses a table of another space definition or target
    untuned_table = table is not None and table.meta.get("settings", {}).get("trials") == 0
    if not untuned and trials == 0 and not has_database(logs_dir, spec) and not untuned_table:
        raise TvmNasError(
            f"target '{spec.name}' has no tuning database in {Path(logs_dir) / spec.name}; run: tvm-nas profile "
            f"--space {a.space.name} --target {spec.name} --trials 500 --logs-dir {logs_dir} (or pass --trials N "
            f"to tune this network here, or --untuned for TVM's default schedules)")
    if measure and spec.is_rpc:
        from .backend.remote import check_tracker

        try:
            check_tracker(spec)
        except TvmNasError as e:
            raise TvmNasError(f"{e} (or pass --no-measure to compile and export only)") from None
    if is_gpu(spec) and trials > 0 and not spec.is_rpc:
        from .backend.artifact import cuda_device_present

        if not cuda_device_present():
            raise TvmNasError(f"target '{spec.name}': tuning needs a CUDA device and none is present; "
                              "use --trials 0")


def _lower(model, a: Arch, onnx_path: Path | None, tvm_target, prepack: bool):
    from .backend import pipeline

    if onnx_path is not None:
        from .backend.onnx_import import import_onnx

        mod = import_onnx(onnx_path)
    else:
        mod = pipeline.import_torch(model, a.input_shape)
    return pipeline.lower(mod, tvm_target, prepack)


def schedule_tasks(fused, spec: TargetSpec, logs_dir, trials: int, seed: int = 0, untuned: bool = False,
                   console: Console | None = None):
    """Apply the target's database: reuse every task it has records for, tune the rest with `trials`.

    Returns:
        ``(database or None, TaskReport)``.
    """
    from .backend import tuning
    from .backend.target import to_tvm_target

    tvm_target = to_tvm_target(spec)
    tasks = tuning.dedup({"net": tuning.extract_tasks(fused, tvm_target)})
    report = TaskReport(total=len(tasks))
    if untuned:
        report.untuned = [f"{t.name}#{k}" for k, t in tasks.items()]
        return None, report
    work_dir = Path(logs_dir) / spec.name
    db = tuning.open_database(work_dir, spec, create=trials > 0)
    missing = {k: t for k, t in tasks.items() if tuning.records(db, t.mod) == 0}
    report.reused = [f"{t.name}#{k}" for k, t in tasks.items() if k not in missing]
    if trials > 0 and missing:
        owed = tuning.split_budget(trials, missing, db)
        if console:
            console.print(f"tuning {len(owed)} of {len(missing)} missing tasks ({sum(owed.values())} trials)")
        tuning.tune(missing, owed, spec, work_dir, seed=seed)
        db = tuning.open_database(work_dir, spec)
    report.tuned = [f"{t.name}#{k}" for k, t in missing.items() if tuning.records(db, t.mod) > 0]
    report.untuned = [f"{t.name}#{k}" for k, t in missing.items() if tuning.records(db, t.mod) == 0]
    return db, report


def _build(fused, spec: TargetSpec, db):
    from .backend.artifact import cuda_build_env
    from .backend.pipeline import build
    from .backend.target import is_gpu, to_tvm_target

    gpu = is_gpu(spec)
    if gpu:
        with cuda_build_env():
            return build(fused, to_tvm_target(spec), db, gpu=True, prepack=False)
    return build(fused, to_tvm_target(spec), db, gpu=False, prepack=True)


def _export(exe, path: Path, spec: TargetSpec) -> Path:
    from .backend import measure
    from .backend.artifact import cuda_build_env
    from .backend.target import is_gpu

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
    from .backend.target import is_gpu, to_tvm_target

    tvm_target = to_tvm_target(spec)
    triple = str(tvm_target.attrs.get("mtriple", "") or "")
    compiler = spec.cross_compiler or "aarch64-linux-gnu-g++"
    if is_gpu(spec):
        return {"status": "skipped", "how": "CUDA modules run only on the device (checked by the measurement run)"}
    if triple.startswith("aarch64") or "aarch64" in (spec.cross_compiler or ""):
        from .backend import aarch64

        missing = aarch64.missing_tools(compiler)
        if missing:
            return {"status": "skipped", "how": f"{', '.join(missing)} not installed ({aarch64.APT_HINT})"}
        y, how = aarch64.run(library, x, compiler), "qemu-aarch64 with TVM's aarch64 runtime"
    elif spec.cross_compiler:
        return {"status": "skipped", "how": f"no emulator for {triple or spec.cross_compiler}"}
    else:
        from .backend.artifact import run_library

        y, how = run_library(library, x, spec.threads), "tvm.runtime.load_module on this machine"
    err = float(np.abs(y.reshape(expected.shape) - expected).max())
    if not err <= atol:  # NaN fails too
        raise TvmNasError(f"{library}: the exported module's outputs differ from PyTorch's by {err:.2e} "
                          f"(> {atol}) ({how})")
    return {"status": "passed", "how": how, "max_abs_err": err}


def _measure(exe, spec: TargetSpec, x: np.ndarray, expected: np.ndarray) -> tuple[dict | None, str]:
    from .backend import measure
    from .backend.artifact import cuda_device_present
    from .backend.target import is_gpu

    if is_gpu(spec) and not spec.is_rpc and not cuda_device_present():
        return None, "not measured: no CUDA device on this machine"
    if spec.cross_compiler and not spec.is_rpc:
        return None, "not measured: a cross target needs its RPC runner"
    outs, t = measure.run_and_time(exe, [x], spec)
    err = float(np.abs(outs[0].reshape(expected.shape) - expected).max())
    if not err <= ATOL:  # NaN fails too
        raise TvmNasError(f"target '{spec.name}': the module's outputs on the device differ from PyTorch's by "
                          f"{err:.2e} (> {ATOL})")
    ev = spec.evaluator
    how = (f"time_evaluator on {t.where}: median of {t.count} repeats (the quieter of 2 rounds), each the mean "
           f"of {t.number} runs (min_repeat_ms={ev.min_repeat_ms}); outputs checked on the device "
           f"(max abs err {err:.1e})")
    return t.to_json(), how


def compile_arch(arch: str | os.PathLike | Arch, target: str | os.PathLike | TargetSpec,
                 weights: str | os.PathLike | None = None, out: str | os.PathLike = "build",
                 trials: int = 0, logs_dir: str | os.PathLike = "tuning_logs", frontend: str = "torch",
                 seed: int = 0, measure: bool = True, verify: bool = True, untuned: bool = False,
                 console: Console | None = None) -> dict:
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

    Returns:
        The manifest (also written to ``out/manifest.json``).
    """
    from .backend.artifact import tvm_version
    from .backend.target import is_gpu, to_tvm_target

    console = console or Console(stderr=True)
    if frontend not in ("torch", "onnx"):
        raise TvmNasError(f"--frontend must be 'torch' or 'onnx', got {frontend!r}")
    a, spec = load_architecture(arch), load_target(target)
    _check_inputs(a, spec, logs_dir, trials, untuned, measure)
    model = build_network_from_arch(a, weights, seed)
    out = Path(out)
    tvm_target, gpu = to_tvm_target(spec), is_gpu(spec)
    x = example_input(a.input_shape, seed)
    expected = torch_forward(model, x)

    t0 = time.perf_counter()
    onnx_info = export_onnx(model, x, out / ONNX_FILE)
    fused = _lower(model, a, out / ONNX_FILE if frontend == "onnx" else None, tvm_target, prepack=not gpu)
    db, tasks = schedule_tasks(fused, spec, logs_dir, trials, seed, untuned, console)
    console.print(f"[bold]{a.label or a.space.name}[/] on [bold]{spec.name}[/]: {tasks.total} tasks, "
                  f"{len(tasks.reused)} reused from the database, {len(tasks.tuned)} newly tuned, "
                  f"{len(tasks.untuned)} untuned")
    exe = _build(fused, spec, db)
    lib = _export(exe, out / LIBRARY, spec)
    compile_s = time.perf_counter() - t0

    checked = verify_library(lib, spec, x, expected) if verify else {"status": "skipped", "how": "--no-verify"}
    timing, how = _measure(exe, spec, x, expected) if measure else (None, "not measured: --no-measure")
    table = _table(logs_dir, spec, a.space)
    predicted = _predict(table, a)
    manifest = _manifest(a, spec, tvm_target, weights, seed, frontend, x, expected, lib, onnx_info, tasks,
                         table, predicted, timing, how, checked, compile_s, tvm_version(), trials, untuned,
                         logs_dir)
    atomic_write_json(out / MANIFEST, manifest)
    console.print(_summary(manifest))
    return manifest


def _predict(table: LatencyTable | None, a: Arch) -> float | None:
    if table is None:
        return None
    try:
        return table.predict(a.space, a.ops)
    except TvmNasError:
        return None  # an op the profile has not measured


def _manifest(a, spec, tvm_target, weights, seed, frontend, x, y, lib, onnx_info, tasks, table, predicted,
              timing, how, checked, compile_s, tvm_v, trials, untuned, logs_dir) -> dict:
    measured = timing["median"] if timing else None
    return {
        "schema": SCHEMA,
        "architecture": {"file": str(a.path) if a.path else None, "label": a.label,
                         "sha256": sha256_file(a.path) if a.path else None, "space": a.space.name,
                         "space_hash": a.space.hash, "ops": a.ops},
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
        "latency_table": None if table is None else {"path": str(table.path), "hash": table.hash},
        "measured_latency_us": measured,
        "measurement": {"how": how, **(timing or {})},
        "measured_over_predicted": measured / predicted if measured and predicted else None,
    }


def _fmt(v: float | None, unit: str = "µs") -> str:
    return "—" if v is None else f"{v:,.1f} {unit}"


def _summary(m: dict) -> str:
    p, ms, r = m["predicted_latency_us"], m["measured_latency_us"], m["measured_over_predicted"]
    ratio = f"{r:.2f}×" if r else "—"
    return (f"{m['target']['name']}: predicted {_fmt(p)} (table sum) vs measured {_fmt(ms)} → ratio {ratio}; "
            f"verification {m['verification']['status']} ({m['verification']['how']})")


# -- peers on the host -----------------------------------------------------------------------------------------
def _median_us(fn, number: int, repeat: int) -> float:
    fn()
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(number):
            fn()
        samples.append((time.perf_counter() - t) / number * 1e6)
    return float(np.median(samples))


def time_torch(model: torch.nn.Module, x: np.ndarray, threads: int | None, number: int = 10,
               repeat: int = 20) -> float:
    """PyTorch eager latency (µs, median). Set MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ high for stable runs."""
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    xt = torch.from_numpy(x)
    try:
        with torch.inference_mode():
            return _median_us(lambda: model(xt), number, repeat)
    finally:
        torch.set_num_threads(old)


def time_onnxruntime(path: str | os.PathLike, x: np.ndarray, threads: int | None, number: int = 10,
                     repeat: int = 20) -> float:
    """ONNX Runtime latency (µs, median) with `threads` intra-op threads."""
    sess = _ort_session(path, threads)
    name = sess.get_inputs()[0].name
    return _median_us(lambda: sess.run(None, {name: x}), number, repeat)


def time_tvm_untuned(model: torch.nn.Module, a: Arch, spec: TargetSpec, x: np.ndarray) -> float:
    """TVM with its default schedules (no database), same pipeline otherwise (µs, median)."""
    from .backend import measure
    from .backend.target import is_gpu, to_tvm_target

    fused = _lower(model, a, None, to_tvm_target(spec), prepack=not is_gpu(spec))
    _, t = measure.run_and_time(_build(fused, spec, None), [x], spec)
    return t.median


def is_host_like(spec: TargetSpec) -> bool:
    """A target this process runs natively (local runner, CPU, no cross compiler): peers can run here too."""
    from .backend.target import is_gpu

    return not spec.is_rpc and not spec.cross_compiler and not is_gpu(spec)


# -- compare ---------------------------------------------------------------------------------------------------
COLUMNS = ("architecture", "target", "runtime", "predicted_us", "measured_us", "measured_over_predicted",
           "vs_tvm")


def compare(archs: Sequence[str | os.PathLike | Arch], targets: Sequence[str | os.PathLike | TargetSpec],
            baselines: bool = False, logs_dir: str | os.PathLike = "tuning_logs", trials: int = 0,
            out: str | os.PathLike | None = None, weights: Sequence[str | os.PathLike | None] | None = None,
            untuned: bool = False, console: Console | None = None) -> list[dict]:
    """Latency of every (architecture × target), plus peers on host-like targets.

    With `baselines`, each host-like target also gets PyTorch eager, ONNX Runtime and TVM untuned for every
    architecture, and a reference architecture of the first architecture's space (all ``mbconv_k3_e6``).

    Returns:
        One row per (architecture, target, runtime) with the columns of :data:`COLUMNS`.
    """
    import tempfile

    console = console or Console(stderr=True)
    loaded = [load_architecture(a) for a in archs]
    specs = [load_target(t) for t in targets]
    wts = list(weights or [None] * len(loaded))
    if len(wts) != len(loaded):
        raise TvmNasError(f"{len(wts)} --weights for {len(loaded)} --arch: give one per architecture or none")
    if baselines and loaded:
        loaded.append(reference_arch(loaded[0].space))
        wts.append(None)
    _unique_labels(loaded)
    for spec in specs:  # fail on bad input before compiling anything
        for a in loaded:
            _check_inputs(a, spec, logs_dir, trials, untuned, True)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(out) if out else Path(tmp)
        for a, w in zip(loaded, wts, strict=True):
            for spec in specs:
                m = compile_arch(a, spec, w, root / _slug(a.label) / spec.name, trials, logs_dir, seed=0,
                                 untuned=untuned, console=console)
                tvm_us = m["measured_latency_us"]
                rows.append(_row(a, spec, "tvm", m["predicted_latency_us"], tvm_us, tvm_us))
                if baselines and is_host_like(spec):
                    rows += _peer_rows(a, spec, w, root / _slug(a.label) / spec.name / ONNX_FILE, tvm_us)
    return rows


def _unique_labels(archs: list[Arch]) -> None:
    seen: dict[str, int] = {}
    for a in archs:
        n = seen.get(a.label, 0)
        seen[a.label] = n + 1
        if n:
            a.label = f"{a.label}#{n + 1}"


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label).strip("_") or "arch"


def _row(a: Arch, spec: TargetSpec, runtime: str, predicted, measured, tvm_us) -> dict:
    return {"architecture": a.label, "target": spec.name, "runtime": runtime, "predicted_us": predicted,
            "measured_us": measured,
            "measured_over_predicted": measured / predicted if measured and predicted else None,
            "vs_tvm": measured / tvm_us if measured and tvm_us else None}


def _peer_rows(a: Arch, spec: TargetSpec, weights, onnx_path: Path, tvm_us) -> list[dict]:
    model = build_network_from_arch(a, weights, 0)
    x = example_input(a.input_shape, 0)
    ev = spec.evaluator
    return [
        _row(a, spec, "tvm-untuned", None, time_tvm_untuned(model, a, spec, x), tvm_us),
        _row(a, spec, "pytorch", None, time_torch(model, x, spec.threads, ev.number, ev.repeat), tvm_us),
        _row(a, spec, "onnxruntime", None, time_onnxruntime(onnx_path, x, spec.threads, ev.number, ev.repeat),
             tvm_us),
    ]


def compare_table(rows: list[dict]) -> Table:
    """The comparison as a terminal table (µs, median)."""
    t = Table(title="latency by architecture × target (µs, median, batch 1)")
    for c, j in (("architecture", "left"), ("target", "left"), ("runtime", "left"), ("predicted µs", "right"),
                 ("measured µs", "right"), ("measured/predicted", "right"), ("vs TVM", "right")):
        t.add_column(c, justify=j)
    for r in rows:
        ratio = r["measured_over_predicted"]
        t.add_row(r["architecture"], r["target"], r["runtime"], _num(r["predicted_us"]), _num(r["measured_us"]),
                  f"{ratio:.2f}×" if ratio else "—", f"{r['vs_tvm']:.2f}×" if r["vs_tvm"] else "—")
    return t


def _num(v) -> str:
    return "—" if v is None else f"{v:,.1f}"


def write_rows(rows: list[dict], csv_path: str | os.PathLike | None = None,
               json_path: str | os.PathLike | None = None, meta: dict | None = None) -> None:
    """Write the comparison rows as CSV and/or JSON (atomically)."""
    if csv_path:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(COLUMNS))
        w.writeheader()
        w.writerows(rows)
        atomic_write_text(csv_path, buf.getvalue())
    if json_path:
        atomic_write_json(json_path, {"schema": SCHEMA, **(meta or {}), "units": "us", "rows": rows})


def deploy_on_host(arch: str | os.PathLike, logs_dir: str | os.PathLike = "tuning_logs",
                   out: str | os.PathLike = "build/host", weights: str | os.PathLike | None = None,
                   trials: int = 0, target: str = "host", console: Console | None = None) -> dict:
    """Compile + verify + measure one architecture on the host and compare it with its peers (for ``tvm-nas run``).

    Returns:
        JSON-able ``{"manifest": ..., "rows": [...]}``; the rows hold TVM, TVM untuned, PyTorch, ONNX Runtime and
        the reference architecture (see :func:`compare`).
    """
    out = Path(out)
    rows = compare([arch], [target], baselines=True, logs_dir=logs_dir, trials=trials, out=out,
                   weights=[weights], console=console)
    a = load_architecture(arch)
    manifest = json.loads((out / _slug(a.label) / load_target(target).name / MANIFEST).read_text())
    return {"manifest": manifest, "rows": rows}
