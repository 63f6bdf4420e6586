"""Functions MetaSchedule's builder runs in its worker processes (importable by reference, no TVM at import)."""

from __future__ import annotations


def _fast_stack(context: int = 1):
    """`inspect.stack()` without the source lookups: TVMScript's parser only needs frames and the caller's line.

    The stock one resolves every frame's module by scanning `sys.modules` (thousands of entries once torch is
    imported), which makes importing TVM's tensor intrinsics take minutes.
    """
    import inspect
    import linecache
    import sys

    frames, f = [], sys._getframe(1)
    while f is not None:
        fn, ln = f.f_code.co_filename, f.f_lineno
        line = linecache.getline(fn, ln) if len(frames) < 4 else ""
        frames.append(inspect.FrameInfo(f, fn, ln, f.f_code.co_name, [line] if line else None, 0 if line else None))
        f = f.f_back
    return frames


def import_tensor_intrinsics(which: str = "") -> None:
    """Import `tvm.s_tir.tensor_intrin` (or one of its backends) with the fast stack walk."""
    import importlib
    import inspect

    name = "tvm.s_tir.tensor_intrin" + (f".{which}" if which else "")
    import sys

    if name in sys.modules:
        return
    slow = inspect.stack
    inspect.stack = _fast_stack
    try:
        importlib.import_module(name)
    finally:
        inspect.stack = slow


def build_kernel(mod, target, _params):
    """MetaSchedule's default build, minus the import of every tensor intrinsic of every backend.

    `tvm.s_tir.tensor_intrin` takes 100+ s to import on a 2-core machine (its CUDA part alone 70 s), in every
    builder worker, which times out every build. Float32 CPU kernels use none of them; GPU targets import the CUDA
    ones only.
    """
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    if target.kind.name == "cuda":
        import_tensor_intrinsics("cuda")
    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target)


class cross_exporter:  # noqa: N801 - used like a function
    """MetaSchedule export function that links each candidate kernel with a cross compiler into a .so."""

    def __init__(self, compiler: str):
        self.compiler = compiler

    def __call__(self, rt_mod) -> str:
        import os
        import tempfile

        from tvm.support import cc

        path = os.path.join(tempfile.mkdtemp(), "kernel.so")
        rt_mod.export_library(path, fcompile=cc.cross_compiler(self.compiler))
        return path
