"""Peers on the host: PyTorch eager, ONNX Runtime and TVM with its default schedules, timed beside TVM."""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from ..arch import Arch
from ..targets import TargetSpec
from .onnx import ort_session


def _median_us(fn, number: int, repeat: int) -> float:
    fn()
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(number):
            fn()
        samples.append((time.perf_counter() - t) / number * 1e6)
    return float(np.median(samples))


def time_torch(model: torch.nn.Module, x: np.ndarray, threads: int | None, number: int = 10,
               repeat: int = 20) -> float:
    """PyTorch eager latency (µs, median). Set MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ high for stable runs."""
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    xt = torch.from_numpy(x)
    try:
        with torch.inference_mode():
            return _median_us(lambda: model(xt), number, repeat)
    finally:
        torch.set_num_threads(old)


def time_onnxruntime(path: str | os.PathLike, x: np.ndarray, threads: int | None, number: int = 10,
                     repeat: int = 20) -> float:
    """ONNX Runtime latency (µs, median) with `threads` intra-op threads."""
    sess = ort_session(path, threads)
    name = sess.get_inputs()[0].name
    return _median_us(lambda: sess.run(None, {name: x}), number, repeat)


def time_tvm_untuned(model: torch.nn.Module, a: Arch, spec: TargetSpec, x: np.ndarray) -> float:
    """TVM with its default schedules (no database), same pipeline otherwise (µs, median)."""
    from ..backend import measure
    from ..backend.target import is_gpu, to_tvm_target
    from .compile import build_module, lower_network

    fused = lower_network(model, a, None, to_tvm_target(spec), prepack=not is_gpu(spec))
    _, t = measure.run_and_time(build_module(fused, spec, None), [x], spec)
    return t.median


def is_host_like(spec: TargetSpec) -> bool:
    """A target this process runs natively (local runner, CPU, no cross compiler): peers can run here too."""
    from ..backend.target import is_gpu

    return not spec.is_rpc and not spec.cross_compiler and not is_gpu(spec)
