"""The one lowering pipeline: torch/ONNX -> Relax -> NHWC, folded, fused -> (database applied) -> executable.

Every candidate op of the latency table and every deployed network goes through exactly these functions, so the
table predicts the module that ships (docs/tvm.md: NHWC + batch-norm folding + weight pre-packing is the fastest
pipeline measured; batch norm is folded in torch by :func:`tvm_nas.ops.prepare_for_deploy`).
"""

from __future__ import annotations

import os

import torch

PIPELINE_VERSION = "nhwc-fold-prepack-1"


class _NHWCEdges(torch.nn.Module):
    """Runs an NCHW module on NHWC input and output, so a lone op is profiled without edge transposes.

    Inside a network the layout conversion cancels the transposes between ops; this makes a lone op look the same.
    """

    def __init__(self, inner: torch.nn.Module, output_4d: bool):
        super().__init__()
        self.inner, self.output_4d = inner, output_4d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inner(x.permute(0, 3, 1, 2))
        return y.permute(0, 2, 3, 1) if self.output_4d else y


def import_torch(model: torch.nn.Module, input_shape: tuple[int, ...], nhwc_io: bool = False):
    """torch module (eval, batch norm folded) -> Relax IRModule with the weights bound as constants."""
    from tvm.relax.frontend.torch import from_exported_program

    model = model.eval()
    x = torch.zeros(input_shape)
    if nhwc_io:
        with torch.no_grad():
            out_4d = model(x).dim() == 4
        model = _NHWCEdges(model, out_4d).eval()
        x = x.permute(0, 2, 3, 1).contiguous()
    with torch.no_grad():
        ep = torch.export.export(model, (x,))
    return from_exported_program(ep, keep_params_as_input=False)


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

    return _elementwise_reductions(from_onnx(onnx.load(str(path)), keep_params_in_input=False))


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


def build(fused, target, database=None, gpu: bool = False, prepack: bool = True):
    """Apply the tuning database (records it lacks keep TVM's default schedule) and compile.

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
        return tvm.compile(mod, target=target)
