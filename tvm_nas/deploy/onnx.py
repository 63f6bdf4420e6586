"""ONNX export of a deployable network, checked by ``onnx.checker`` and by ONNX Runtime against PyTorch."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import TvmNasError
from ..io import sha256_file
from .model import torch_forward

ATOL = 1e-4


def export_onnx(model: torch.nn.Module, x: np.ndarray, path: str | os.PathLike, atol: float = ATOL) -> dict:
    """Export to ONNX (torch.export-based exporter), validate with ``onnx.checker`` and ONNX Runtime.

    Returns:
        ``{"file", "sha256", "opset", "max_abs_err"}`` (the error of ONNX Runtime against PyTorch).

    Raises:
        TvmNasError: the checker rejects the model, or ONNX Runtime's outputs differ from PyTorch's by > atol.
    """
    import contextlib

    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            torch.onnx.export(model, (torch.from_numpy(x),), str(tmp), dynamo=True, external_data=False,
                              input_names=["input"], output_names=["logits"], verbose=False)
        proto = onnx.load(str(tmp))
        onnx.checker.check_model(proto, full_check=True)
        err = float(np.abs(onnxruntime_forward(tmp, x) - torch_forward(model, x)).max())
        if not err <= atol:  # NaN fails too
            raise TvmNasError(f"{path}: ONNX Runtime's outputs differ from PyTorch's by {err:.2e} (> {atol})")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=None)
    return {"file": path.name, "sha256": sha256_file(path), "opset": opset, "max_abs_err": err}


def ort_session(path, threads: int | None = None, spinning: bool = False):
    """An ONNX Runtime CPU session with every graph optimization (``ORT_ENABLE_ALL``).

    Args:
        threads: intra-op threads (inter-op 1); None: ONNX Runtime's default.
        spinning: let idle intra-op threads spin (ONNX Runtime's default). Off for the one-off output checks, so
            that their threads do not spin on the cores TVM's workers need next (docs/measurement.md);
            ``compare`` times both and reports the faster.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def onnxruntime_forward(path: str | os.PathLike, x: np.ndarray) -> np.ndarray:
    sess = ort_session(path)
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]
