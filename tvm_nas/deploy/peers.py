"""Peers on the host, each in its best configuration, timed in blocks beside TVM's shipped module.

Runtimes (the rows of ``compare --baselines``): ``tvm`` (the shipped module), ``tvm-untuned`` (the same network with
TVM's default schedules), and the peers of :data:`PEERS`:

- ``pytorch``: eager, under ``torch.inference_mode``.
- ``torch-compile``: ``torch.compile`` (inductor, default mode), compiled and warmed up before any timing.
- ``onnxruntime``: the build's ONNX file, ``ORT_ENABLE_ALL``; timed with intra-op spinning on (its default) and
  off, and the faster is reported (the other's figure kept under ``tried``).
- ``openvino``: the build's ONNX file on the CPU plugin, ``PERFORMANCE_HINT: LATENCY``; timed in f32 and in its
  default precision where that differs (bf16 on CPUs that have it); x86 targets only.
- ``executorch``: torch.export, lowered to the XNNPACK delegate, run by ExecuTorch's pybindings.

Every runtime gets the target's thread count and its output is checked against PyTorch eager with one tolerance
(:data:`~tvm_nas.deploy.onnx.ATOL`); where a runtime is timed in several settings, its row is the fastest that
passes that check, the others are kept under ``tried``. A peer that is not installed, that does not run on the
target, or whose compilation fails gets a row saying so instead of a figure. ``$TVM_NAS_PEERS`` (or
``compare --peers``) picks the peers, e.g. ``TVM_NAS_PEERS=onnxruntime,pytorch``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import operator
import os
import platform
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch

from ..arch import Arch
from ..errors import TvmNasError
from ..targets import TargetSpec
from ..timing import ORDERS, Protocol, Timing, blocks, python_sampler
from .onnx import ATOL, ort_session

PEERS_ENV = "TVM_NAS_PEERS"
INSTALL_PEERS = 'pip install "tvm-nas[peers]"'
COOLDOWN_S = 0.2  # sleep after each block: spinning pools wind down before the next runtime starts
DEFAULT_ORDER = "alternate"
PYTHON_CALL = "tvm/python-call"  # TVM's shipped module timed through Python, as the peers are


@dataclass(frozen=True)
class Peer:
    """A runtime compared with TVM: its row name, the module that must be importable, and how to install it."""

    name: str
    title: str
    module: str
    install: str


PEERS = (Peer("pytorch", "PyTorch eager", "torch", "pip install torch"),
         Peer("torch-compile", "PyTorch torch.compile", "torch", "pip install torch"),
         Peer("onnxruntime", "ONNX Runtime", "onnxruntime", "pip install onnxruntime"),
         Peer("openvino", "OpenVINO", "openvino", INSTALL_PEERS),
         Peer("executorch", "ExecuTorch (XNNPACK)", "executorch", INSTALL_PEERS))
PEER_NAMES = tuple(p.name for p in PEERS)
_PEER = {p.name: p for p in PEERS}


def selected_peers(names: str | Sequence[str] | None = None) -> list[str]:
    """The peers to run, in :data:`PEERS` order: `names` (a list or a comma-separated string), else
    ``$TVM_NAS_PEERS``, else all of them.

    Raises:
        TvmNasError: an unknown peer name.
    """
    if names is None:
        names = os.environ.get(PEERS_ENV) or ",".join(PEER_NAMES)
    if isinstance(names, str):
        names = [n for n in (s.strip() for s in names.split(",")) if n]
    unknown = [n for n in names if n not in _PEER]
    if unknown:
        raise TvmNasError(f"unknown peer(s) {', '.join(unknown)}: choose from {', '.join(PEER_NAMES)}")
    return [n for n in PEER_NAMES if n in names]


def installed(module: str) -> bool:
    """Whether `module` can be found (a module set to None in ``sys.modules``, i.e. blocked, counts as missing)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


@dataclass
class Result:
    """How one runtime ran: its setting (or why it did not run), its figure and its output check.

    Attributes:
        setting: how it ran (``ONNX Runtime 1.32.0, ORT_ENABLE_ALL, spinning on, 1 thread``), or, without a
            figure, why not (``not installed: pip install ...``, ``not run on rpi4b: ...``, ``failed: ...``).
        max_abs_err: largest |output - PyTorch eager output|.
        tried: the other settings timed for this runtime (each ``{"setting", "median", "q1", "q3", "stable"}``).
    """

    runtime: str
    setting: str
    timing: Timing | None = None
    max_abs_err: float | None = None
    tried: list[dict] = field(default_factory=list)

    @property
    def check(self) -> str | None:
        """``ok`` within :data:`ATOL`, else ``max err 3.1e-02``; None when nothing ran."""
        if self.max_abs_err is None:
            return None
        return "ok" if self.max_abs_err <= ATOL else f"max err {self.max_abs_err:.1e}"


@dataclass
class PeerRun:
    """The runtimes of one network on one target, and how their blocks were ordered."""

    results: dict[str, Result]
    order: str
    cooldown_s: float
    sequence: list[list[str]]
    protocol: dict
    tvm_python_us: float
    """TVM's shipped module timed as the peers are (one Python call per run): what their ``vs tvm`` divides by."""


@dataclass
class _Candidate:
    """One setting of one runtime, ready to time: `fn` runs one inference."""

    key: str
    runtime: str
    setting: str
    fn: Callable[[], object]
    output: np.ndarray


class _NotHere(Exception):
    """The peer does not run on this target (the message says why)."""


@dataclass
class _Context:
    model: torch.nn.Module
    x: np.ndarray
    xt: torch.Tensor
    spec: TargetSpec
    onnx_path: str

    @property
    def threads(self) -> str:
        n = self.spec.threads
        return "default threads" if not n else f"{n} thread{'s' if n > 1 else ''}"


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


def _np(out) -> np.ndarray:
    while isinstance(out, (list, tuple)) or hasattr(out, "to_tuple"):
        out = out.to_tuple()[0] if hasattr(out, "to_tuple") else out[0]
    if isinstance(out, torch.Tensor):
        return out.detach().numpy()
    return np.asarray(out)


def _pytorch(c: _Context) -> list[_Candidate]:
    fn = partial(c.model, c.xt)
    with torch.inference_mode():
        out = _np(fn())
    return [_Candidate("pytorch", "pytorch", f"PyTorch {torch.__version__} eager, inference_mode, {c.threads}", fn,
                       out)]


def _torch_compile(c: _Context) -> list[_Candidate]:
    torch._dynamo.reset()  # a fresh cache: past its recompile limit Dynamo would silently run eager
    compiled = torch.compile(c.model)  # inductor, default mode; compiles at the first call (tens of seconds)
    fn = partial(compiled, c.xt)
    with torch.inference_mode():  # timed under inference_mode too: the same graph, no recompilation
        out = _np(fn())
        fn()
    return [_Candidate("torch-compile", "torch-compile", f"torch.compile {torch.__version__}, inductor (default "
                       f"mode), inference_mode, {c.threads}", fn, out)]


def _onnxruntime(c: _Context) -> list[_Candidate]:
    out = []
    for spin in ("on", "off"):
        sess = ort_session(c.onnx_path, c.spec.threads, spinning=spin == "on")
        fn = partial(sess.run, None, {sess.get_inputs()[0].name: c.x})
        out.append(_Candidate(f"onnxruntime/spinning {spin}", "onnxruntime",
                              f"ONNX Runtime {_version('onnxruntime')}, ORT_ENABLE_ALL, spinning {spin}, {c.threads}",
                              fn, _np(fn())))
    return out


def _openvino(c: _Context) -> list[_Candidate]:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        raise _NotHere(f"OpenVINO is compared on x86 targets only (this host is {platform.machine()})")
    import openvino as ov

    core = ov.Core()
    # f32, as every other runtime computes; and OpenVINO's own default where it differs (bf16 on CPUs that have
    # it): faster, but it must pass the same output check to be the row's figure
    default = core.get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()
    out = []
    for prec in dict.fromkeys(("f32", default)):
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": prec}
        if c.spec.threads:
            config["INFERENCE_NUM_THREADS"] = c.spec.threads
        compiled = core.compile_model(str(c.onnx_path), "CPU", config)
        req = compiled.create_infer_request()
        fn = partial(req.infer, {0: c.x}, share_inputs=True, share_outputs=True)
        n = compiled.get_property("INFERENCE_NUM_THREADS")
        label = f"{prec} precision" + (" (its default here)" if prec == default else "")
        out.append(_Candidate(f"openvino/{prec}", "openvino", f"OpenVINO {_version('openvino')} CPU, "
                              f"PERFORMANCE_HINT LATENCY, {label}, {n} thread{'s' if n != 1 else ''}", fn,
                              np.array(_np(list(fn().values())))))
    return out


# what ExecuTorch's C++ runtime writes straight to the process's stderr when its thread pool starts: how it probed
# the CPU ("[cpuinfo_utils.cpp:87] Failed to open midr file ...") and "[threadpool.cpp:66] Resetting threadpool"
_EXECUTORCH_CHATTER = ("[cpuinfo_utils.cpp:", "[threadpool.cpp:")


@contextlib.contextmanager
def _native_stderr_without(chatter: Sequence[str]):
    """Run the block with file descriptor 2 captured, then pass on every line that does not start with one of
    `chatter`: native libraries write there directly, past Python's logging and warnings filters."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [line for line in tmp.read().decode(errors="replace").splitlines()
                    if not line.startswith(tuple(chatter))]
            if kept:
                print("\n".join(kept), file=sys.stderr, flush=True)


def _executorch(c: _Context) -> list[_Candidate]:
    with _native_stderr_without(_EXECUTORCH_CHATTER):
        return _executorch_prepare(c)


def _executorch_prepare(c: _Context) -> list[_Candidate]:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from executorch.extension.pybindings import portable_lib

    edge = to_edge_transform_and_lower(torch.export.export(c.model, (c.xt,)), partitioner=[XnnpackPartitioner()])
    calls = [n for n in edge.exported_program().graph_module.graph.nodes
             if n.op == "call_function" and n.target is not operator.getitem]
    outside = sorted({str(getattr(n.target, "__name__", n.target)).split(".default")[0] for n in calls
                      if "executorch_call_delegate" not in str(n.target)})
    program = edge.to_executorch()
    if c.spec.threads:
        portable_lib._unsafe_reset_threadpool(c.spec.threads)
    buffer = program.buffer  # the module reads this buffer in place: it must outlive the module
    module = portable_lib._load_for_executorch_from_buffer(buffer)

    def fn(module=module, args=(c.xt,), keep=buffer):
        return module.forward(args)

    delegated = "every op delegated" if not outside else f"{', '.join(outside)} on portable kernels"
    return [_Candidate("executorch", "executorch", f"ExecuTorch {_version('executorch')}, XNNPACK delegate "
                       f"({delegated}), fp32, {c.threads}", fn, _np(fn()))]


_PREPARE = {"pytorch": _pytorch, "torch-compile": _torch_compile, "onnxruntime": _onnxruntime,
            "openvino": _openvino, "executorch": _executorch}


def _one_line(e: BaseException, limit: int = 160) -> str:
    text = " ".join(str(e).split()) or "no message"
    s = f"{type(e).__name__}: {text}"
    return s if len(s) <= limit else s[:limit - 1] + "…"


def untuned_module(model: torch.nn.Module, a: Arch, spec: TargetSpec):
    """The same network compiled with TVM's default schedules (no database), same pipeline otherwise."""
    from ..backend.target import is_gpu, to_tvm_target
    from .compile import build_module, lower_network

    fused = lower_network(model, a, None, to_tvm_target(spec), prepack=not is_gpu(spec))
    return build_module(fused, spec, None)


def time_with_peers(model: torch.nn.Module, a: Arch, spec: TargetSpec, library: str | os.PathLike,
                    onnx_path: str | os.PathLike, x: np.ndarray, peers: str | Sequence[str] | None = None,
                    order: str = DEFAULT_ORDER, cooldown_s: float = COOLDOWN_S, tvm_setting: str = "shipped module"
                    ) -> PeerRun:
    """TVM's shipped module, TVM untuned and the peers, each in its best configuration with the target's threads,
    timed in blocks under the measurement protocol (:func:`~tvm_nas.timing.blocks`).

    Set MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ high for stable PyTorch eager runs.

    Args:
        peers: which peers (see :func:`selected_peers`).
        order: the blocks' order in each round (``forward``, ``reverse``, ``alternate``).
        cooldown_s: sleep after each block.
        tvm_setting: how the shipped module was built (shown in its row).

    Returns:
        :class:`PeerRun`: one :class:`Result` per runtime (``tvm``, ``tvm-untuned``, then the peers).
    """
    import tvm

    from ..backend import measure
    from .model import torch_forward

    if order not in ORDERS:
        raise TvmNasError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
    if not is_host_like(spec):
        raise TvmNasError(f"{spec.name}: peers run on host-like targets only ({not_run_reason(spec)})")
    names = selected_peers(peers)
    protocol = Protocol.of(spec.evaluator)
    ref = torch_forward(model, x)
    ctx = _Context(model, x, torch.from_numpy(x), spec, str(onnx_path))
    tvm_v = f"TVM {tvm.__version__}"
    loaded = {"tvm": measure.load(library, [x], spec),
              "tvm-untuned": measure.load(untuned_module(model, a, spec), [x], spec)}
    shipped = loaded["tvm"]
    cands = [_Candidate("tvm", "tvm", f"{tvm_v}, {tvm_setting}, {ctx.threads}", shipped.outputs,
                        shipped.outputs()[0]),
             _Candidate("tvm-untuned", "tvm-untuned", f"{tvm_v}, default schedules (no database), {ctx.threads}",
                        loaded["tvm-untuned"].outputs, loaded["tvm-untuned"].outputs()[0]),
             # the peers' harness: one Python call per run (TVM's own loop above pays no Python call)
             _Candidate(PYTHON_CALL, "tvm", f"{tvm_v}, {tvm_setting}, called from Python like the peers "
                        f"(vm.invoke_stateful, input bound once), {ctx.threads}",
                        partial(shipped.vm.invoke_stateful, "main"), shipped.outputs()[0])]
    results: dict[str, Result] = {}
    old = torch.get_num_threads()
    if spec.threads:
        torch.set_num_threads(spec.threads)  # before torch.compile: inductor's kernels keep the count they saw
    try:
        for n in names:
            if not installed(_PEER[n].module):
                results[n] = Result(n, f"not installed: {_PEER[n].install}")
                continue
            try:
                cands += _PREPARE[n](ctx)
            except _NotHere as e:
                results[n] = Result(n, f"not run on {spec.name}: {e}")
            except Exception as e:  # a peer that cannot build this network is a row, not a failed compare
                results[n] = Result(n, f"failed: {_one_line(e)}")
        samplers, where, number = {}, {}, {}
        with torch.inference_mode():
            for c in cands:
                if c.key in loaded:
                    samplers[c.key], where[c.key] = loaded[c.key].sampler(spec), loaded[c.key].where
                    number[c.key] = spec.evaluator.number
                else:
                    samplers[c.key], number[c.key] = python_sampler(c.fn, protocol)
                    where[c.key] = f"local cpu, {c.setting}"
            timings, sequence = blocks(samplers, protocol, where, number, order=order, cooldown_s=cooldown_s)
    finally:
        torch.set_num_threads(old)
    errs = {c.key: float(np.abs(np.asarray(c.output, dtype=np.float64) - ref).max()) for c in cands}
    # each runtime's row: the fastest of its settings that pass the output check (the fastest of all if none
    # does); TVM's rows keep TVM's own loop, the figure its table predicts
    for c in sorted(cands, key=lambda c: (c.key == PYTHON_CALL, not errs[c.key] <= ATOL, timings[c.key].median)):
        err = errs[c.key]
        t = timings[c.key]
        if c.runtime not in results:
            results[c.runtime] = Result(c.runtime, c.setting, t, err)
        else:
            results[c.runtime].tried.append({"setting": c.setting, "median": t.median, "q1": t.q1, "q3": t.q3,
                                             "stable": t.stable, "max_abs_err": err})
    order_of = ["tvm", "tvm-untuned", *names]
    return PeerRun({k: results[k] for k in order_of if k in results}, order, cooldown_s, sequence,
                   protocol.to_json(), timings[PYTHON_CALL].median)


def not_run_reason(spec: TargetSpec) -> str | None:
    """Why the peers do not run on `spec` (None for a host-like target): they run on this host only, and a host
    figure beside a board's would compare two machines."""
    from ..backend.target import is_gpu

    if spec.is_rpc:
        return "an RPC device; the peers run on this host only"
    if spec.cross_compiler:
        return f"cross-compiled ({spec.cross_compiler}); the peers run on this host only"
    if is_gpu(spec):
        return "a GPU target; the peers here run on this host's CPU"
    return None


def is_host_like(spec: TargetSpec) -> bool:
    """A target this process runs natively (local runner, CPU, no cross compiler): peers can run here too."""
    return not_run_reason(spec) is None
