"""Worked examples that run in the test suite."""
