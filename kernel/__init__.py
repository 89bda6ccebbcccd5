"""The ternmq kernel."""
