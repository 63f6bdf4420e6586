"""ONNX -> Relax for the deploy stage: the shared importer plus a rewrite the layout conversion needs.

TVM's ONNX frontend imports an element-wise ``Min``/``Max`` of two tensors as ``min(stack([a, b]))``: a 5-D
tensor that ``ConvertLayout`` cannot handle. It is rewritten to ``minimum(a, b)`` / ``maximum(a, b)``, the same
element-wise ops the torch.export route produces for ReLU6.
"""

from __future__ import annotations

import os


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
    """ONNX file -> Relax IRModule ready for :func:`tvm_nas.backend.pipeline.lower`."""
    from . import pipeline

    return _elementwise_reductions(pipeline.import_onnx(path))
