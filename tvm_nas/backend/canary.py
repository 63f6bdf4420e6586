"""The canary: one fixed kernel timed beside every measurement, so each figure can be put at one machine speed.

A shared virtual machine changes speed for minutes at a time (its host's other tenants, the sibling hyper-thread,
the clock): on the development VM every net of a validation ran 1.35–1.5× slower in some rounds than in others
(docs/measurement.md). A table measured in one phase and nets measured in another then disagree by that much,
whatever the table's quality. The canary is a small parallel, vectorisable matrix product written directly in TIR
(no tuning, no database: the same code on every run of a target); the protocol times it around every module's
round, and expresses the module's samples at a reference canary speed (see :func:`tvm_nas.timing.interleave`).

CPU targets only: a GPU's speed is not shared this way, and its kernels would need a GPU schedule.
"""

from __future__ import annotations

import atexit
import functools
import itertools
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..timing import Sampler

#: Bump when the kernel changes: a reference measured with another canary is not comparable.
VERSION = 1
M, K, N = 64, 64, 256
_UPLOADS = itertools.count()


def _prim_func():
    from tvm.script import tirx as T

    @T.prim_func
    def canary(a: T.Buffer((M, K), "float32"), b: T.Buffer((K, N), "float32"), c: T.Buffer((M, N), "float32")):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        for i in T.parallel(M):
            for j in range(N):
                c[i, j] = T.float32(0)
            for k in range(K):
                for j in range(N):
                    c[i, j] = c[i, j] + a[i, k] * b[k, j]

    return canary


@functools.lru_cache(maxsize=8)
def _library(target_json: str, cross_compiler: str | None) -> str:
    """The canary compiled for a target and exported to a shared library (once per process and target)."""
    import tvm
    from tvm.support import cc

    exe = tvm.compile(tvm.IRModule({"main": _prim_func()}), target=tvm.target.Target(json.loads(target_json)))
    folder = tempfile.mkdtemp(prefix="tvm-nas-canary-")
    atexit.register(shutil.rmtree, folder, True)
    path = Path(folder) / "canary.so"
    if cross_compiler:
        exe.export_library(str(path), fcompile=cc.cross_compiler(cross_compiler))
    else:
        exe.export_library(str(path))
    return str(path)


def applies(spec) -> bool:
    from .target import is_gpu

    return not is_gpu(spec)


def sampler(spec, sess=None, samples: int | None = None) -> Sampler:
    """A sampler of the canary on the target (locally, or through an open RPC session): one call = one round of
    `samples` samples (µs per run), each filling the target's window like a module's samples."""
    from tvm import runtime

    from .target import configure_remote_threads, set_runtime_threads, to_tvm_target

    lib = _library(str(to_tvm_target(spec)), spec.cross_compiler)
    if spec.is_rpc:
        name = f"canary-{os.getpid()}-{next(_UPLOADS)}.so"
        sess.upload(lib, target=name)
        configure_remote_threads(sess, spec)
        mod, dev = sess.load_module(name), sess.cpu(0)
    else:
        set_runtime_threads(spec)
        mod, dev = runtime.load_module(lib), runtime.cpu(0)
    rng = np.random.default_rng(0)
    args = [runtime.tensor(rng.standard_normal(s, dtype=np.float32), dev) for s in ((M, K), (K, N), (M, N))]
    ev = spec.evaluator
    f = mod.time_evaluator("main", dev, number=ev.number, repeat=samples or max(3, ev.repeat // 4),
                           min_repeat_ms=ev.min_repeat_ms)
    keep = (mod, args)  # the remote module and arrays live as long as the sampler

    def sample():
        return np.asarray(f(*keep[1]).results, dtype=np.float64) * 1e6

    return sample


def check(spec) -> float:
    """The canary's result against numpy (max abs error), run on this machine: a wrong kernel times nothing."""
    from tvm import runtime

    from .target import to_tvm_target

    lib = runtime.load_module(_library(str(to_tvm_target(spec)), None))
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((M, K), dtype=np.float32), rng.standard_normal((K, N), dtype=np.float32)
    args = [runtime.tensor(a), runtime.tensor(b), runtime.tensor(np.zeros((M, N), np.float32))]
    lib["main"](*args)
    return float(np.abs(args[2].numpy() - a @ b).max())
