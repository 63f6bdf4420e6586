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
        if err > atol:
            raise TvmNasError(f"{path}: ONNX Runtime's outputs differ from PyTorch's by {err:.2e} (> {atol})")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=None)
    return {"file": path.name, "sha256": sha256_file(path), "opset": opset, "max_abs_err": err}


def ort_session(path, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def onnxruntime_forward(path: str | os.PathLike, x: np.ndarray) -> np.ndarray:
    sess = ort_session(path)
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]
