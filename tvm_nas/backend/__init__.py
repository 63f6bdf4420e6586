"""The TVM adapter: every TVM API call of the project lives in this subpackage, so an upgrade touches one place."""
