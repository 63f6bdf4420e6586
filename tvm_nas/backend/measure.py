"""Running and timing compiled modules, in this process or on a device through the RPC tracker."""

from __future__ import annotations

import gc
import itertools
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..timing import Protocol, Sampler, Timing, interleave
from .target import configure_remote_threads, is_gpu, set_runtime_threads

_UPLOADS = itertools.count()


def _device(spec, sess=None):
    import tvm

    kind = "cuda" if is_gpu(spec) else "cpu"
    return (sess or tvm).device(kind, 0)


def export(executable, path: str | os.PathLike, spec) -> Path:
    """Write a compiled module as a shared library (cross-linked when the target has a cross compiler)."""
    from tvm.support import cc

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.so")
    if spec.cross_compiler:
        spec.check_cross_compiler()
        executable.export_library(str(tmp), fcompile=cc.cross_compiler(spec.cross_compiler))
    else:
        executable.export_library(str(tmp))
    os.replace(tmp, path)
    from .trust import record_built

    record_built(path)
    return path


def tvm_sampler(vm, dev, inputs, spec) -> Sampler:
    """One round of `main` under TVM's time_evaluator: ``repeat`` samples (µs per run), each filling the window.

    The VM keeps its own inputs (``set_input``), so samplers of several VMs interleave without interfering.
    """
    ev = spec.evaluator
    vm.set_input("main", *inputs)
    f = vm.time_evaluator("invoke_stateful", dev, number=ev.number, repeat=ev.repeat,
                          min_repeat_ms=ev.min_repeat_ms)
    return lambda: np.asarray(f("main").results, dtype=np.float64) * 1e6


@contextmanager
def target_session(spec):
    """One RPC session for many measurements (None for a local target).

    The server serves one session at a time and only lets go of one that is closed or timed out, so a session
    must be released as soon as the work is done.
    """
    if not spec.is_rpc:
        yield None
        return
    from .remote import session

    sess = session(spec)
    try:
        yield sess
    finally:
        del sess
        gc.collect()


@dataclass
class Loaded:
    """A module loaded on its device (here or through RPC), its inputs bound, ready to run and time."""

    vm: object
    dev: object
    args: list
    where: str
    keep: tuple = ()

    def outputs(self) -> list[np.ndarray]:
        self.vm.set_input("main", *self.args)
        self.vm.invoke_stateful("main")
        return _outputs(self.vm.get_outputs("main"))

    def sampler(self, spec) -> Sampler:
        return tvm_sampler(self.vm, self.dev, self.args, spec)


def load(executable, inputs: list[np.ndarray], spec, sess=None) -> Loaded:
    """Load a compiled module (an executable, or an exported library path) on the target.

    Locally the runtime's thread count is fixed first; through RPC the library is uploaded and the server's pool
    is configured to the target's threads.
    """
    from tvm import relax, runtime

    from .trust import check_loadable, open_library

    if spec.is_rpc:
        if isinstance(executable, (str, os.PathLike)):
            executable = check_loadable(executable)
        name = f"mod-{os.getpid()}-{next(_UPLOADS)}.so"
        with tempfile.TemporaryDirectory() as d:
            if isinstance(executable, (str, os.PathLike)):
                sess.upload(str(executable), target=name)
            else:
                sess.upload(str(export(executable, Path(d) / name, spec)))
        configure_remote_threads(sess, spec)
        rexec = sess.load_module(name)
        dev = _device(spec, sess)
        where = f"rpc {spec.runner.tracker_host}:{spec.runner.tracker_port} key={spec.runner.key}"
        return Loaded(relax.VirtualMachine(rexec, dev), dev, [runtime.tensor(x, dev) for x in inputs], where,
                      (rexec,))
    set_runtime_threads(spec)
    if isinstance(executable, (str, os.PathLike)):
        executable = open_library(executable)  # never an earlier library loaded from the same path
    dev = _device(spec)
    where = f"local {dev}, {spec.threads or 'default'} threads"
    return Loaded(relax.VirtualMachine(executable, dev), dev, [runtime.tensor(x, dev) for x in inputs], where)


def time_loaded(loaded: dict[str, Loaded], spec, extra: dict[str, tuple[Sampler, str, int]] | None = None,
                protocol: Protocol | None = None, on_round=None) -> dict[str, Timing]:
    """Time loaded modules (and `extra` samplers: name -> (sampler, where, runs per sample)) interleaved."""
    protocol = protocol or Protocol.of(spec.evaluator)
    samplers = {n: m.sampler(spec) for n, m in loaded.items()}
    where = {n: m.where for n, m in loaded.items()}
    number = {n: spec.evaluator.number for n in loaded}
    for n, (s, w, k) in (extra or {}).items():
        samplers[n], where[n], number[n] = s, w, k
    return interleave(samplers, protocol, where, number, on_round)


def run_and_time(executable, inputs: list[np.ndarray], spec, measure: bool = True,
                 sess=None) -> tuple[list[np.ndarray], Timing | None]:
    """Run `main` once on the target (outputs returned) and time it under the measurement protocol.

    Args:
        sess: an open :func:`target_session` to reuse; for an RPC target without one, a session is opened and
            closed around this call.
    """
    if spec.is_rpc and sess is None:
        with target_session(spec) as s:
            return run_and_time(executable, inputs, spec, measure, s)
    m = load(executable, inputs, spec, sess)
    outs = m.outputs()
    timing = time_loaded({"m": m}, spec)["m"] if measure else None
    del m
    return outs, timing


def _outputs(out) -> list[np.ndarray]:
    return [out.numpy()] if hasattr(out, "numpy") else [o.numpy() for o in out]


class _Trivial:
    """The smallest module the VM can run: one kernel adding 1 to a single float (built lazily, needs torch)."""

    @staticmethod
    def module():
        import torch

        class AddOne(torch.nn.Module):
            def forward(self, x):
                return x + 1.0

        return AddOne()


def invocation_cost(spec, sess=None) -> Timing:
    """What one call of a compiled module costs besides its kernels (VM dispatch, argument and output handling).

    Every table entry is a whole module call, so a sum of entries counts this once per op; a network pays it once.
    Measured with the same pipeline and protocol as the ops, on a one-kernel module whose kernel does nothing.
    """
    from . import pipeline
    from .target import to_tvm_target

    tgt = to_tvm_target(spec)
    gpu = is_gpu(spec)
    fused = pipeline.lower(pipeline.import_torch(_Trivial.module(), (1, 1)), tgt, prepack=not gpu)
    exe = pipeline.build(fused, tgt, None, gpu=gpu, prepack=not gpu)
    _, t = run_and_time(exe, [np.zeros((1, 1), np.float32)], spec, sess=sess)
    return t
