"""ternmq: an MQTT broker on trio built as a microkernel of pluggy plugins."""

__version__ = "0.1.0"
