"""The one lowering pipeline: torch/ONNX -> Relax -> NHWC, folded, fused -> (database applied) -> executable.

Every candidate op of the latency table and every deployed network goes through exactly these functions, so the
table predicts the module that ships (docs/tvm.md: NHWC + batch-norm folding + weight pre-packing is the fastest
pipeline measured; batch norm is folded in torch by :func:`tvm_nas.ops.prepare_for_deploy`).
"""

from __future__ import annotations

import math
import os

import torch

PIPELINE_VERSION = "nhwc-fold-prepack-vmtir-3"
# 2: stem and classifier profiled with their network edges (ReLU6 moved from torch's minimum(relu(x), 6) to a Clip
# rewritten by clip_to_minimum: the same Relax, so the same kernels and tuning records; the version stayed).
# 3: CPU modules run their `main` compiled to machine code (VM_MODE), not interpreted: the same kernels, less time
# between them, so tables measured before are measured again (their tuning records are reused).

VM_MODE = "compiled"
"""How a CPU module's ``main`` runs: ``"compiled"``, lowered to one native function that calls the kernels
directly, or ``"bytecode"``, interpreted by the Relax VM instruction by instruction. Compiled saves the VM's
dispatch between kernels (about 0.5 µs a kernel on the project's 2-core VM: 13% of a 50 µs net, nothing measurable
on a 1.6 ms one; ``bench/vm_mode.py``). A compiled ``main`` has no instrument hook, so per-layer timing records
the kernel calls from a bytecode twin (:mod:`tvm_nas.deploy.perlayer`). The plain table sum then over-predicts
nets of tens of µs by about 5% (each block's entry counts ~0.8 µs it does not add in a net; docs/measurement.md),
which validate's calibration removes. CUDA modules stay bytecode: unmeasured."""


class _NHWCEdges(torch.nn.Module):
    """Runs an NCHW module on NHWC input and output, so a lone op is profiled with the kernels it has in a network.

    Inside a network the layout conversion cancels the transposes between ops; this makes a lone op look the same.
    ``nchw_input`` keeps the network's NCHW input (the stem: its input transpose is a kernel of every network).
    A module with ``forward_nhwc`` (the classifier) runs that instead: its pooling then reduces the NHWC axes, as
    the network's does after the layout conversion.
    """

    def __init__(self, inner: torch.nn.Module, output_4d: bool, nchw_input: bool = False):
        super().__init__()
        self.inner, self.output_4d, self.nchw_input = inner, output_4d, nchw_input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self.inner, "forward_nhwc") and not self.nchw_input:
            return self.inner.forward_nhwc(x)
        y = self.inner(x if self.nchw_input else x.permute(0, 3, 1, 2))
        return y.permute(0, 2, 3, 1) if self.output_4d else y


def import_torch(model: torch.nn.Module, input_shape: tuple[int, ...], nhwc_io: bool = False,
                 nchw_input: bool = False):
    """torch module (eval, batch norm folded) -> Relax IRModule with the weights bound as constants.

    Args:
        nhwc_io: NHWC input and output, as an op inside a network (see :class:`_NHWCEdges`).
        nchw_input: with `nhwc_io`, keep the input NCHW (the network's first op).
    """
    from tvm.relax.frontend.torch import from_exported_program

    model = model.eval()
    x = torch.zeros(input_shape)
    if nhwc_io:
        with torch.no_grad():
            out_4d = model(x).dim() == 4
        model = _NHWCEdges(model, out_4d, nchw_input).eval()
        if not nchw_input:
            x = x.permute(0, 2, 3, 1).contiguous()
    with torch.no_grad():
        ep = torch.export.export(model, (x,))
    return clip_to_minimum(from_exported_program(ep, keep_params_as_input=False))


def clip_to_minimum(mod):
    """Rewrite every ``clip(x, lo, hi)`` as ``minimum(relu(x), hi)`` (lo = 0) or ``minimum(maximum(x, lo), hi)``.

    ReLU6 reaches TVM as ``clip`` from both routes (torch's hardtanh, ONNX's ``Clip``), and ``ConvertLayout`` has
    no rule for ``clip``: it would put a transpose on each side of every activation. The element-wise form
    follows its input's layout, and fuses into the convolution before it like the clip would. Shipping the
    rewrite here, not in the network, keeps the exported ONNX the standard graph other runtimes fuse best.
    """
    from tvm import relax
    from tvm.relax.dpl import is_op, rewrite_call, wildcard

    x = wildcard()
    pattern = is_op("relax.clip")(x, wildcard(), wildcard())

    def rewrite(expr, m):
        call = m[pattern]
        dtype = m[x].ty.dtype
        lo, hi = (float(a.value) for a in call.args[1:])
        if not (math.isfinite(lo) or math.isfinite(hi)):
            return m[x]
        y = m[x]
        if math.isfinite(lo):
            y = relax.op.nn.relu(y) if lo == 0.0 else relax.op.maximum(y, relax.const(lo, dtype))
        return relax.op.minimum(y, relax.const(hi, dtype)) if math.isfinite(hi) else y

    for gv, fn in list(mod.functions.items()):
        if isinstance(fn, relax.Function):
            mod[gv] = rewrite_call(pattern, rewrite, fn)
    return mod


def _elementwise_reductions(mod):
    from tvm import relax
    from tvm.relax.dpl import is_op, is_tuple, rewrite_call, wildcard

    a, b = wildcard(), wildcard()
    stacked = is_op("relax.stack")(is_tuple([a, b]))
    for reduce_op, binary in (("relax.min", relax.op.minimum), ("relax.max", relax.op.maximum)):
        pattern = is_op(reduce_op)(stacked)

        def rewrite(expr, m, binary=binary, pattern=pattern):
            axes = m[pattern].attrs.axis
            stack_axis = m[stacked].attrs.axis
            if axes is None or len(axes) != 1 or int(axes[0]) != int(stack_axis) or m[pattern].attrs.keepdims:
                return expr
            return binary(m[a], m[b])

        for gv, fn in list(mod.functions.items()):
            if isinstance(fn, relax.Function):
                mod[gv] = rewrite_call(pattern, rewrite, fn)
    return mod


def import_onnx(path: str | os.PathLike):
    """ONNX file -> Relax IRModule (weights bound as constants), ready for :func:`lower`.

    TVM's ONNX frontend imports an element-wise ``Min``/``Max`` of two tensors as ``min(stack([a, b]))``: a 5-D
    tensor that ``ConvertLayout`` cannot handle. It is rewritten to ``minimum(a, b)`` / ``maximum(a, b)``, the
    same element-wise ops the torch.export route produces for ReLU6.
    """
    import onnx
    from tvm.relax.frontend.onnx import from_onnx

    return clip_to_minimum(_elementwise_reductions(from_onnx(onnx.load(str(path)), keep_params_in_input=False)))


def _cancel_transposes(mod):
    """Remove permute_dims pairs that cancel (and identity permutes) left behind by the layout conversion."""
    from tvm import relax
    from tvm.relax.dpl import is_op, rewrite_call, wildcard

    x = wildcard()
    inner = is_op("relax.permute_dims")(x)
    outer = is_op("relax.permute_dims")(inner)

    def axes(call, ndim):
        a = call.attrs.axes
        return list(range(ndim))[::-1] if a is None else [int(v) for v in a]

    def pair(expr, m):
        ndim = int(m[x].ty.ndim)
        a, b = axes(m[inner], ndim), axes(m[outer], ndim)
        comp = [a[i] for i in b]
        return m[x] if comp == list(range(ndim)) else relax.op.permute_dims(m[x], comp)

    single = is_op("relax.permute_dims")(x)

    def ident(expr, m):
        ndim = int(m[x].ty.ndim)
        return m[x] if axes(m[single], ndim) == list(range(ndim)) else expr

    for gv, fn in list(mod.functions.items()):
        if isinstance(fn, relax.Function):
            fn = rewrite_call(outer, pair, fn)
            fn = rewrite_call(single, ident, fn)
            mod[gv] = fn
    return mod


def optimize(mod):
    """Target-independent graph passes: NHWC/OHWI convolutions, cancel transposes, fold constants."""
    import tvm
    from tvm import relax

    mod = relax.transform.DecomposeOpsForInference()(mod)
    mod = relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "OHWI"]})(mod)
    mod = _cancel_transposes(mod)
    return tvm.transform.Sequential([
        relax.transform.CanonicalizeBindings(),
        relax.transform.FoldConstant(),
        relax.transform.DeadCodeElimination(),
    ])(mod)


def fuse(mod, target, prepack: bool):
    """Legalize and fuse into the kernels MetaSchedule tunes (task extraction and compilation start here)."""
    import tvm
    from tvm import relax

    passes = [relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(), relax.transform.FoldConstant(),
              relax.transform.FuseOps(), relax.transform.FuseTIR()]
    if prepack:
        passes.append(relax.transform.AttachAttrLayoutFreeBuffers())
    with target:
        return tvm.transform.Sequential(passes)(mod)


def lower(mod, target, prepack: bool):
    """optimize + fuse: the module whose tasks are tuned and which :func:`build` compiles."""
    return fuse(optimize(mod), target, prepack)


def build(fused, target, database=None, gpu: bool = False, prepack: bool = True, vm_mode: str | None = None):
    """Apply the tuning database (records it lacks keep TVM's default schedule) and compile.

    ``vm_mode``: ``"compiled"`` or ``"bytecode"`` (None: :data:`VM_MODE` on CPU, bytecode on a GPU).

    Returns a `relax.VMExecutable`.
    """
    import tvm
    from tvm import relax

    with target:
        if database is not None:
            with database:
                mod = relax.transform.MetaScheduleApplyDatabase()(fused)
        else:
            mod = fused
        if prepack:
            mod = tvm.transform.Sequential([relax.transform.SplitLayoutRewritePreproc(),
                                            relax.transform.LiftTransformParams(),
                                            relax.transform.FoldConstant()])(mod)
        if gpu:
            from tvm.s_tir import dlight

            mod = dlight.ApplyDefaultSchedule(dlight.gpu.Matmul(), dlight.gpu.GEMV(), dlight.gpu.Reduction(),
                                              dlight.gpu.GeneralReduction(), dlight.gpu.Fallback())(mod)
        return relax.build(mod, target=target, exec_mode=vm_mode or ("bytecode" if gpu else VM_MODE))
