"""Running and timing compiled modules, in this process or on a device through the RPC tracker."""

from __future__ import annotations

import gc
import itertools
import os
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .target import is_gpu, set_runtime_threads

_UPLOADS = itertools.count()


@dataclass
class Timing:
    """Latency statistics in microseconds over `count` repeats (each the mean of `number` runs)."""

    median: float
    mean: float
    std: float
    min: float
    count: int
    number: int
    where: str

    def to_json(self) -> dict:
        return asdict(self)


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
    return path


def _time(vm, dev, inputs, spec, where: str, rounds: int = 2) -> Timing:
    """Time `main` in `rounds` rounds of the target's evaluator and keep the round with the lowest median.

    On a shared machine a round can land in a burst of contention (TVM's spinning thread pool then slows down by
    orders of magnitude); the quieter round is the one that describes the module.
    """
    ev = spec.evaluator
    vm.set_input("main", *inputs)
    f = vm.time_evaluator("invoke_stateful", dev, number=ev.number, repeat=ev.repeat,
                          min_repeat_ms=ev.min_repeat_ms)
    best = None
    for _ in range(rounds):
        r = np.asarray(f("main").results) * 1e6
        if best is None or np.median(r) < np.median(best):
            best = r
    return Timing(float(np.median(best)), float(best.mean()), float(best.std()), float(best.min()), len(best),
                  ev.number, where)


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


def run_and_time(executable, inputs: list[np.ndarray], spec, measure: bool = True,
                 sess=None) -> tuple[list[np.ndarray], Timing | None]:
    """Run `main` once on the target (outputs returned) and time it with the target's evaluator settings.

    Args:
        sess: an open :func:`target_session` to reuse; for an RPC target without one, a session is opened and
            closed around this call.
    """
    if spec.is_rpc and sess is None:
        with target_session(spec) as s:
            return run_and_time(executable, inputs, spec, measure, s)
    if spec.is_rpc:
        return _run_remote(executable, inputs, spec, measure, sess)
    return _run_local(executable, inputs, spec, measure)


def _outputs(out) -> list[np.ndarray]:
    return [out.numpy()] if hasattr(out, "numpy") else [o.numpy() for o in out]


def _run_remote(executable, inputs, spec, measure, sess):
    from tvm import relax, runtime

    name = f"mod-{next(_UPLOADS)}.so"
    with tempfile.TemporaryDirectory() as d:
        lib = export(executable, Path(d) / name, spec)
        sess.upload(str(lib))
    rexec = sess.load_module(name)
    dev = _device(spec, sess)
    vm = relax.VirtualMachine(rexec, dev)
    args = [runtime.tensor(x, dev) for x in inputs]
    vm.set_input("main", *args)
    vm.invoke_stateful("main")
    outs = _outputs(vm.get_outputs("main"))
    where = f"rpc {spec.runner.tracker_host}:{spec.runner.tracker_port} key={spec.runner.key}"
    timing = _time(vm, dev, args, spec, where) if measure else None
    del vm, rexec, args
    return outs, timing


def _run_local(executable, inputs, spec, measure):
    from tvm import relax, runtime

    set_runtime_threads(spec)
    dev = _device(spec)
    vm = relax.VirtualMachine(executable, dev)
    args = [runtime.tensor(x, dev) for x in inputs]
    outs = _outputs(vm["main"](*args))
    timing = _time(vm, dev, args, spec, f"local {dev}, {spec.threads or 'default'} threads") if measure else None
    return outs, timing
