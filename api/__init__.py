"""Management HTTP API plugin."""
