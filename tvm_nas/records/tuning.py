"""The tuning time ledger (``time_budget.json``) and a tuning database's target stamp (``target.json``).
"""

from __future__ import annotations

from pydantic import (
    ConfigDict,
    RootModel,
)

from .base import (
    Seconds,
    _Fixed,
)


# -- time_budget.json (backend/budget.py) and target.json (backend/tuning.py) ----------------------------------------
class _Spent(_Fixed):
    spent_s: Seconds


class TimeLedgerFile(RootModel[dict[str, _Spent]]):
    """``time_budget.json``: a hash of a set of kernels -> the tuning seconds spent on them."""

    model_config = ConfigDict(strict=True)


class TargetStamp(_Fixed):
    """``target.json`` beside a tuning database: the target (and its TVM target string) the database serves."""

    name: str
    tvm: str
