"""TargetSpec -> tvm.target.Target, and the device to run on."""

from __future__ import annotations

import functools
import os

from ..errors import TvmNasError


@functools.lru_cache(maxsize=1)
def host_cpu() -> str:
    import tvm

    return str(tvm.target.codegen.llvm_get_system_cpu())


def _resolve(conf, threads, where):
    if isinstance(conf, str):
        conf = {"tag": conf}
    conf = dict(conf)
    if conf.get("mcpu") == "auto":
        conf["mcpu"] = host_cpu()
    if threads and conf.get("kind", "llvm") == "llvm" and "tag" not in conf:
        conf.setdefault("num-cores", threads)
    return conf


def to_tvm_target(spec, where: str | None = None):
    """Build the `tvm.target.Target` of a target spec (with its host for CUDA or cross builds)."""
    import tvm

    where = where or f"target '{spec.name}': field 'tvm'"
    conf = _resolve(spec.tvm, spec.threads, where)
    if conf.get("kind") == "cuda" and "arch" not in conf and "tag" not in conf:
        raise TvmNasError(f"{where}: a CUDA target needs 'arch' (e.g. sm_80, sm_87, sm_90): nvcc rejects the default")
    if spec.host is not None:
        conf["host"] = _resolve(spec.host, spec.threads, where)
    try:
        target = tvm.target.Target(conf)
    except Exception as e:  # TVM raises several error types for bad tags and attributes
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else e.__class__.__name__
        if "tag" in conf:
            raise TvmNasError(f"{where}: unknown TVM tag or bad attribute {conf!r} ({msg}); list the tags with: "
                              "python -c 'import tvm; print(list(tvm.target.list_tags()))'") from None
        raise TvmNasError(f"{where}: TVM rejects {conf!r} ({msg})") from None
    _check_cpu(target, where)
    return target


def _check_cpu(target, where: str) -> None:
    """Refuse a CPU name LLVM does not know: LLVM would only warn and compile for a generic CPU."""
    from tvm.target import codegen

    if target.kind.name != "llvm" or not target.attrs.get("mcpu"):
        return
    cpu = str(target.attrs["mcpu"])
    triple = str(target.attrs.get("mtriple", "") or codegen.llvm_get_system_triple())
    if not codegen.llvm_is_valid_cpu(cpu, triple):
        import difflib

        import tvm

        known = [str(c) for c in codegen.llvm_get_cpu_archlist(tvm.target.Target({"kind": "llvm", "mtriple": triple}))]
        close = difflib.get_close_matches(cpu, known, n=3) or known[:3]
        raise TvmNasError(f"{where}: mcpu {cpu!r} is not a CPU LLVM knows for {triple} (did you mean "
                          f"{', '.join(close)}? {len(known)} known; or mcpu: auto for this machine's CPU)")


def target_kind(spec) -> str:
    return to_tvm_target(spec).kind.name


def is_gpu(spec) -> bool:
    return target_kind(spec) in ("cuda", "rocm", "vulkan", "metal", "opencl")


def set_runtime_threads(spec) -> None:
    """Fix the thread count of TVM's CPU pool in this process (and its children) to the target's `threads`.

    TVM reads ``TVM_NUM_THREADS`` once, when its pool starts; unset, it starts one worker per core it counts as
    "big", which on a VM without frequency information is one (docs/measurement.md). Call this before anything
    runs a TVM kernel in the process (the CLI does, as soon as it knows the target). Workers stay pinned to
    cores, TVM's default and what a deployed module does: on an idle machine pinned workers were 14% faster than
    unpinned ones and never hit the slow mode (docs/measurement.md). On a machine shared with other jobs, export
    ``TVM_BIND_THREADS=0`` yourself: a pinned worker whose core is busy stalls every parallel kernel.
    """
    if not spec.threads:
        return
    os.environ["TVM_NUM_THREADS"] = str(spec.threads)


def configure_remote_threads(sess, spec) -> None:
    """Set the RPC server's runtime pool to the target's `threads` (its own default otherwise)."""
    if spec.threads:
        sess.get_function("runtime.config_threadpool")(-3, int(spec.threads))
