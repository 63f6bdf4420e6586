"""Peers on the host: PyTorch eager, ONNX Runtime and TVM with its default schedules, timed interleaved with TVM."""

from __future__ import annotations

import os

import numpy as np
import torch

from ..arch import Arch
from ..targets import TargetSpec
from ..timing import Protocol, Timing, python_sampler
from .onnx import ort_session


def untuned_module(model: torch.nn.Module, a: Arch, spec: TargetSpec):
    """The same network compiled with TVM's default schedules (no database), same pipeline otherwise."""
    from ..backend.target import is_gpu, to_tvm_target
    from .compile import build_module, lower_network

    fused = lower_network(model, a, None, to_tvm_target(spec), prepack=not is_gpu(spec))
    return build_module(fused, spec, None)


def time_with_peers(model: torch.nn.Module, a: Arch, spec: TargetSpec, library: str | os.PathLike,
                    onnx_path: str | os.PathLike, x: np.ndarray) -> dict[str, Timing]:
    """TVM's shipped module and its peers (TVM untuned, PyTorch eager, ONNX Runtime) timed interleaved, with the
    target's threads, under the measurement protocol.

    Set MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ high for stable PyTorch eager runs.

    Returns:
        runtime (``tvm``, ``tvm-untuned``, ``pytorch``, ``onnxruntime``) -> :class:`~tvm_nas.timing.Timing`.
    """
    from ..backend import measure

    protocol = Protocol.of(spec.evaluator)
    loaded = {"tvm": measure.load(library, [x], spec),
              "tvm-untuned": measure.load(untuned_module(model, a, spec), [x], spec)}
    old = torch.get_num_threads()
    if spec.threads:
        torch.set_num_threads(spec.threads)
    xt = torch.from_numpy(x)
    sess = ort_session(onnx_path, spec.threads)
    name = sess.get_inputs()[0].name
    threads = f"{spec.threads or 'default'} threads"
    try:
        with torch.inference_mode():
            pt, n_pt = python_sampler(lambda: model(xt), protocol)
            ort, n_ort = python_sampler(lambda: sess.run(None, {name: x}), protocol)
            return measure.time_loaded(loaded, spec, protocol=protocol, extra={
                "pytorch": (pt, f"PyTorch eager, {threads}", n_pt),
                "onnxruntime": (ort, f"ONNX Runtime (no spinning), {threads}", n_ort)})
    finally:
        torch.set_num_threads(old)


def is_host_like(spec: TargetSpec) -> bool:
    """A target this process runs natively (local runner, CPU, no cross compiler): peers can run here too."""
    from ..backend.target import is_gpu

    return not spec.is_rpc and not spec.cross_compiler and not is_gpu(spec)
