"""Submission files in the exact competition format, their validation, and upload."""

from kit.submit.format import read_submission, submission_columns, validate_submission, write_submission

__all__ = ["read_submission", "submission_columns", "validate_submission", "write_submission"]
