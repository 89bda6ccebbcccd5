"""Built-in plugins, loaded by short name exactly as third-party ones are by entry point."""

BUILTIN = {
    "retainer": "ternmq.plugins.retainer",
}
