"""Built-in plugins, loaded by short name exactly as third-party ones are by entry point.

The essential ones (``ESSENTIAL``) are loaded by the broker first, always, whether the
configuration names them or not, and cannot be disabled: ``admin`` (the admin command
tree's commands and the control socket of ``ternmq-admin``).
"""

BUILTIN = {
    "admin": "ternmq.plugins.admin",
    "api": "ternmq.api",
    "acl": "ternmq.plugins.acl",
    "banned": "ternmq.plugins.banned",
    "cluster": "ternmq.plugins.cluster",
    "passwd": "ternmq.plugins.passwd",
    "redis_store": "ternmq.plugins.cluster.store",
    "retainer": "ternmq.plugins.retainer",
    "sqlite_store": "ternmq.plugins.sqlite_store",
    "sys": "ternmq.plugins.sys",
    "webhooks": "ternmq.plugins.webhooks",
}
ESSENTIAL = ("admin",)
