"""What the deploy stage needs from TVM beyond the shared pipeline: shipped-library loading, CUDA build setup,
CUDA source inspection and the TVM version for manifests."""

from __future__ import annotations

import os
from contextlib import contextmanager

import numpy as np


def tvm_version() -> str:
    import tvm

    return str(tvm.__version__)


@contextmanager
def cuda_build_env():
    """Compile CUDA kernels with nvcc to a fatbin (TVM's default, NVRTC, needs a CUDA driver)."""
    old = os.environ.get("TVM_CUDA_COMPILE_MODE")
    os.environ["TVM_CUDA_COMPILE_MODE"] = "nvcc"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TVM_CUDA_COMPILE_MODE", None)
        else:
            os.environ["TVM_CUDA_COMPILE_MODE"] = old


def _all_modules(mod):
    yield mod
    for m in mod.imports:
        yield from _all_modules(m)


def device_sources(executable, kind: str = "cuda") -> list[str]:
    """Source code of the device modules (e.g. CUDA) a compiled executable carries."""
    out = []
    for m in _all_modules(executable.mod):
        if m.kind == kind:
            out.append(m.inspect_source())
    return out


def cuda_device_present() -> bool:
    import tvm

    try:
        return bool(tvm.cuda(0).exist)
    except Exception:  # no driver at all
        return False


def run_library(path: str | os.PathLike, x: np.ndarray, threads: int | None = None) -> np.ndarray:
    """Load an exported library (:func:`~tvm_nas.backend.trust.open_library`) and run `main` on the CPU; its
    first output."""
    import tvm
    from tvm import relax

    from .trust import open_library

    if threads:
        os.environ["TVM_NUM_THREADS"] = str(threads)
    lib = open_library(path)
    dev = tvm.cpu(0)
    vm = relax.VirtualMachine(lib, dev)
    out = vm["main"](tvm.runtime.tensor(np.ascontiguousarray(x), dev))
    while not hasattr(out, "numpy"):
        out = out[0]
    return out.numpy()
