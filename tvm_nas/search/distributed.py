"""Devices, mixed precision and several processes (torchrun) for the search.

A search across N processes is one search: every process builds the same supernet from the same seed, samples the
same binarized paths from a generator seeded by (seed, epoch), and trains on its own share of every global batch.
After each backward pass the gradients are averaged across processes with one all-reduce:

* weight step: the gradients of the fixed layers and of the one sampled path per block (the only parameters that
  have gradients; they are the same on every process because the paths are);
* architecture step: the α gradients.

This is DistributedDataParallel's averaging, done by hand. DDP itself needs ``find_unused_parameters=True`` for a
supernet (every inactive path is unused), which walks the autograd graph every step and still all-reduces a
gradient for every parameter, zeros included: with 7 candidates per block that is about 7x the traffic of the
sampled paths. DDP also cannot follow the architecture step, which freezes the weights and runs two paths per block.
Averaging only the active paths' gradients gives the same update with a fraction of the traffic.

Backends: gloo on CPU, nccl on CUDA (one GPU per process, ``cuda:LOCAL_RANK``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from ..config import DEVICES, PRECISIONS
from ..errors import TvmNasError

# GlobalBatchNorm2d needs a differentiable all-reduce; the public one is marked deprecated for a private successor
warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional\.all_reduce is deprecated",
                        category=FutureWarning)



def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``cpu``, ``cuda`` or ``auto`` (cuda when a GPU is usable, else cpu) as a torch device.

    Raises:
        TvmNasError: unknown name, or cuda asked for where torch sees no GPU.
    """
    if name not in DEVICES:
        raise TvmNasError(f"--device: unknown device {name!r}; accepted: {', '.join(DEVICES)}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise TvmNasError(f"--device cuda: this torch ({torch.__version__}) sees no CUDA GPU; use --device cpu "
                              "or auto")
        if local_rank >= torch.cuda.device_count():
            raise TvmNasError(f"--device cuda: process {local_rank} has no GPU ({torch.cuda.device_count()} "
                              "visible); start at most one process per GPU")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def check_precision(precision: str, device: torch.device) -> None:
    """fp32 anywhere, bf16 on CPU or CUDA, fp16 on CUDA only (CPU float16 kernels are slow or missing)."""
    if precision not in PRECISIONS:
        raise TvmNasError(f"--precision: unknown precision {precision!r}; accepted: {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type != "cuda":
        raise TvmNasError("--precision fp16: needs --device cuda; use bf16 or fp32 on the CPU")


def autocast(device: torch.device, precision: str):
    """The autocast context of a weight step (a no-op for fp32)."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def grad_scaler(device: torch.device, precision: str):
    """A loss scaler for fp16 (None otherwise: bf16 has fp32's range)."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


@dataclass
class Dist:
    """This process's place in a (possibly one-process) search.

    Attributes:
        rank: this process's index; ``world`` the number of processes; ``local_rank`` its index on this machine.
        device: where the supernet lives.
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        """Only the main process writes files and prints."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def average_gradients(self, params) -> None:
        """Replace each parameter's gradient by its mean over processes (a missing one counts as zeros).

        Every process must pass the same parameters in the same order.
        """
        if not self.active:
            return
        params = list(params)
        if not params:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch._utils._flatten_dense_tensors([p.grad for p in params])
        torch.distributed.all_reduce(flat)
        flat.div_(self.world)
        for p, g in zip(params, torch._utils._unflatten_dense_tensors(flat, [p.grad for p in params]),
                        strict=True):
            p.grad.copy_(g)

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of ``values`` over processes."""
        if not self.active:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def broadcast_buffers(self, module: torch.nn.Module) -> None:
        """Give every process the main process's buffers (BatchNorm running statistics)."""
        if not self.active:
            return
        for b in module.buffers():
            torch.distributed.broadcast(b, 0)

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    @property
    def _comm_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")


class GlobalBatchNorm2d(torch.nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover the whole global batch, across processes.

    torch's SyncBatchNorm has no CPU kernel; this one works with gloo and nccl alike: one differentiable
    all-reduce of (sum, sum of squares, count) per layer and forward pass. With it, N processes compute what one
    process computes on the whole batch. In eval mode, or in one process, it is plain BatchNorm2d (same
    state-dict keys).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce  # differentiable; its successor is private

        xf = x.float()
        c = xf.shape[1]
        count = torch.full((1,), xf.numel() / max(c, 1), dtype=torch.float32, device=xf.device)
        stats = all_reduce(torch.cat([xf.sum((0, 2, 3)), (xf * xf).sum((0, 2, 3)), count]))
        n = stats[-1].clamp_min(1.0)
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp_min(0.0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * n / (n - 1).clamp_min(1.0)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.detach(), alpha=m)
        y = (xf - mean[None, :, None, None]) * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y.to(x.dtype)


def use_global_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """Turn every BatchNorm2d of ``module`` into a :class:`GlobalBatchNorm2d` in place (parameters kept)."""
    for m in module.modules():
        if type(m) is torch.nn.BatchNorm2d:
            m.__class__ = GlobalBatchNorm2d
    return module


def init(device: str = "cpu") -> Dist:
    """Join the process group that torchrun describes in the environment (or none: one process).

    Raises:
        TvmNasError: a bad device.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world > 1 and not torch.distributed.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        torch.distributed.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank,
                                             world_size=world)
    return Dist(rank, world, local_rank, dev)


def shutdown() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def launch(nproc: int, argv: list[str]) -> int:
    """Run ``tvm-nas ARGV`` in ``nproc`` processes under torchrun on this machine; returns its exit status."""
    if nproc < 1:
        raise TvmNasError(f"--nproc: must be at least 1, got {nproc}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(nproc),
           "--master-addr", "127.0.0.1", "--master-port", str(port), "-m", "tvm_nas", *argv]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return subprocess.run(cmd, env=env).returncode


def strip_nproc(argv: list[str]) -> list[str]:
    """``argv`` without its ``--nproc N`` / ``--nproc=N``."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


