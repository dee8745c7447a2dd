"""Verification checks: one module per check; a report is a list of check results."""
