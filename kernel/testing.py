"""Testing helpers for ternmq and plugin authors (registered as a pytest plugin)."""
