"""The report stage: the run's ``summary.json`` (schema), its figures and the HTML page."""

from .page import render_report, terminal_summary
from .summary import SUMMARY, RunSummary, load_summary, write_summary

__all__ = ["SUMMARY", "RunSummary", "load_summary", "render_report", "terminal_summary", "write_summary"]
