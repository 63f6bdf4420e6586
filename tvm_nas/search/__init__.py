"""ProxylessNAS search: supernet with binary gates, latency loss from a TVM table, the loop, derivation."""

from ..config import SearchConfig
from .derive import derive
from .loop import ARCH_FILE, ProxylessSearch
from .loss import ExpectedLatency, latency_loss
from .supernet import MixedOp, Supernet

__all__ = ["ARCH_FILE", "ExpectedLatency", "MixedOp", "ProxylessSearch", "SearchConfig", "Supernet", "derive",
           "latency_loss"]
