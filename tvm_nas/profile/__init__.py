"""The profile stage: every unique candidate op of a space lowered, tuned and measured on a target, and the
latency table that holds the results."""

from .profiler import profile
from .table import LatencyTable, table_path

__all__ = ["LatencyTable", "profile", "table_path"]
