"""tvm-nas: hardware-aware neural architecture search (ProxylessNAS) whose latency table comes from TVM.

The handful of names a user needs; each is imported on first use so `import tvm_nas` stays light.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "load_space": ".space", "SearchSpace": ".space",
    "load_target": ".targets", "TargetSpec": ".targets",
    "parse_op": ".ops", "Network": ".network",
    "profile": ".profile", "LatencyTable": ".profile", "LatencyModel": ".profile",
    "ProxylessSearch": ".search", "SearchConfig": ".config", "TrainConfig": ".config", "RunConfig": ".config",
    "load_architecture": ".arch", "compile_arch": ".deploy", "compare": ".deploy",
    "TvmNasError": ".errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module 'tvm_nas' has no attribute {name!r}")
