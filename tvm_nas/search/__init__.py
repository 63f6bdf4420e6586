"""ProxylessNAS search: supernet with binary gates, latency loss from a TVM table, the loop, derivation."""

from .derive import derive, load_arch, write_arch
from .loop import ARCH_FILE, ProxylessSearch, SearchConfig
from .loss import ExpectedLatency, latency_loss
from .supernet import MixedOp, Supernet

__all__ = ["ARCH_FILE", "ExpectedLatency", "MixedOp", "ProxylessSearch", "SearchConfig", "Supernet", "derive",
           "latency_loss", "load_arch", "write_arch"]
