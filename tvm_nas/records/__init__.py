"""The records tvm-nas writes for itself and reads back later: a run's state (``run.json``), a build's manifest
(``manifest.json``), a validation's result (``validate.json``), a search checkpoint's plain fields, the tuning time
ledger (``time_budget.json``) and a tuning database's target stamp (``target.json``).

Each has one strict pydantic model here, validated where the file is read: a damaged, hand-edited or hostile file is
one line of :class:`~tvm_nas.errors.TvmNasError` naming the file and the field, never a KeyError, TypeError or
AttributeError in a later stage. The readers return the file's object (validated), as the callers used it before.

Records whose fields the product alone writes refuse an unknown field (``extra="forbid"``); the open ones (a
stage's result, a timing, a fitted model's summary) keep fields they do not know, unread, and type the fields the
product reads. Every latency the product computes with is a finite positive number of µs, every duration a finite
number of seconds, every path a run records relative to its folder stays inside it. No torch or TVM here.
"""

from .base import TimingRecord, check, load_record, reason
from .deploy import ManifestFile, ValidationFile, ValidationSummary, load_manifest, load_validation
from .runstate import (
    BaselinesDone,
    CompareDone,
    CompileDone,
    ProfileDone,
    ReportDone,
    SearchDone,
    StageDone,
    TrainDone,
    ValidateDone,
    run_state_model,
)
from .search import CheckpointState, EpochRecord
from .tuning import TargetStamp, TimeLedgerFile

__all__ = ["BaselinesDone", "CheckpointState", "CompareDone", "CompileDone", "EpochRecord", "ManifestFile",
           "ProfileDone", "ReportDone", "SearchDone", "StageDone", "TargetStamp", "TimeLedgerFile", "TimingRecord",
           "TrainDone", "ValidateDone", "ValidationFile", "ValidationSummary", "check", "load_manifest", "load_record",
           "load_validation", "reason", "run_state_model"]
