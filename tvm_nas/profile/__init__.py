"""The profile stage: every unique candidate op of a space lowered, tuned and measured on a target, the latency
table that holds the results, and the latency model (the table with what `validate` fitted to it) that every
prediction goes through."""

from .model import LatencyModel
from .profiler import profile
from .table import LatencyTable, table_path

__all__ = ["LatencyModel", "LatencyTable", "profile", "table_path"]
