"""Functions MetaSchedule's builder runs in its worker processes (importable by reference, no TVM at import)."""

from __future__ import annotations


def build_kernel(mod, target, _params):
    """MetaSchedule's default build, minus the import of every tensor intrinsic of every backend.

    `tvm.s_tir.tensor_intrin` takes 100+ s to import on a 2-core machine (its CUDA part alone 70 s), in every
    builder worker, which times out every build. Float32 CPU kernels use none of them; GPU targets import the CUDA
    ones only.
    """
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    if target.kind.name == "cuda":
        import tvm.s_tir.tensor_intrin.cuda  # noqa: F401
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
