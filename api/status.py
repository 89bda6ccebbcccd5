"""The status page (``/status``) and its data (``/status.json``, VerneMQ's shape plus
the plugins and message rates), for a person looking at one node."""

from __future__ import annotations

import time
from typing import Any

from ternmq import __version__
from ternmq.kernel import Service


class Rates:
    """Messages per second in and out, from the counters between two looks (at least a
    second apart)."""

    def __init__(self) -> None:
        self._last: tuple[float, float, float] | None = None
        self.per_second = (0.0, 0.0)

    def update(self, received: float, sent: float) -> tuple[float, float]:
        now = time.monotonic()
        last = self._last
        if last is None:
            self._last = (now, received, sent)
        elif now - last[0] >= 1.0:
            elapsed = now - last[0]
            self.per_second = ((received - last[1]) / elapsed, (sent - last[2]) / elapsed)
            self._last = (now, received, sent)
        return self.per_second


def status_data(service: Service, rates: Rates) -> list[dict[str, Any]]:
    """``[{"<node>": {...}}]`` as VerneMQ's ``/status.json``, with ternmq's plugins."""
    values = service.metrics()
    online = values["gauge.clients_online"]
    msg_in, msg_out = values["counter.publish_received"], values["counter.deliveries"]
    rate_in, rate_out = rates.update(msg_in, msg_out)
    node = service.node_name
    return [
        {
            node: {
                "num_online": online,
                "num_offline": values["gauge.sessions"] - online,
                "msg_in": msg_in,
                "msg_out": msg_out,
                "msg_in_rate": round(rate_in, 1),
                "msg_out_rate": round(rate_out, 1),
                "queue_drop": values["counter.messages_dropped"],
                "num_subscriptions": values["gauge.subscriptions"],
                "num_retained": values.get("gauge.retained_messages", 0),
                "version": __version__,
                "mystatus": [[{node: True}]],
                "listeners": [
                    {
                        "name": info.name,
                        "type": info.type,
                        "status": info.status,
                        "ip": info.address,
                        "port": info.port,
                        "mountpoint": info.mountpoint,
                        "max_conns": info.max_connections,
                        "active_conns": info.active_connections,
                    }
                    for info in service.listeners()
                ],
                "plugins": [
                    {
                        "name": info.name,
                        "state": info.state,
                        "errors": info.errors,
                        "timeouts": info.timeouts,
                        "last_error": info.last_error,
                    }
                    for info in service.plugins()
                ],
            }
        }
    ]


# The page fetches status.json itself (every REFRESH_MS) so it stays current without
# reloading; plain DOM code, no framework to serve.
PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>ternmq status</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.5em; }
table { border-collapse: collapse; } td, th { border: 1px solid #ccc; padding: .3em .7em; text-align: left; }
.figures td:first-child { font-weight: bold; } .bad { color: #b00; } #error { color: #b00; }
</style>
</head>
<body>
<h1>ternmq <span id="node"></span></h1>
<p id="error"></p>
<table class="figures" id="figures"></table>
<h2>Listeners</h2>
<table id="listeners"></table>
<h2>Plugins</h2>
<table id="plugins"></table>
<p><small>Refreshed every REFRESH_SECONDS s. <a href="status.json">status.json</a></small></p>
<script>
function fill(table, rows, columns) {
  table.replaceChildren();
  const head = table.insertRow();
  for (const column of columns) { const th = document.createElement("th"); th.textContent = column; head.appendChild(th); }
  for (const row of rows) {
    const tr = table.insertRow();
    for (const column of columns) {
      const cell = tr.insertCell();
      const value = row[column];
      cell.textContent = value === null || value === undefined ? "" : String(value);
      if ((column === "status" && value !== "running") || ((column === "errors" || column === "timeouts") && value > 0)) cell.className = "bad";
    }
  }
}
async function refresh() {
  try {
    const reply = await fetch("status.json", {cache: "no-store"});
    if (!reply.ok) throw new Error("status.json answered " + reply.status);
    const [entry] = await reply.json();
    const [node, data] = Object.entries(entry)[0];
    document.getElementById("node").textContent = node + " (version " + data.version + ")";
    const figures = [
      ["clients online", data.num_online], ["sessions offline", data.num_offline],
      ["messages in per second", data.msg_in_rate], ["messages out per second", data.msg_out_rate],
      ["messages in", data.msg_in], ["messages out", data.msg_out], ["subscriptions", data.num_subscriptions],
      ["retained messages", data.num_retained], ["dropped", data.queue_drop],
    ];
    const table = document.getElementById("figures");
    table.replaceChildren();
    for (const [name, value] of figures) { const tr = table.insertRow(); tr.insertCell().textContent = name; tr.insertCell().textContent = String(value); }
    fill(document.getElementById("listeners"), data.listeners, ["name", "type", "status", "ip", "port", "mountpoint", "active_conns", "max_conns"]);
    fill(document.getElementById("plugins"), data.plugins, ["name", "state", "errors", "timeouts", "last_error"]);
    document.getElementById("error").textContent = "";
  } catch (error) {
    document.getElementById("error").textContent = "Cannot read the status: " + error.message;
  }
}
refresh();
setInterval(refresh, REFRESH_MS);
</script>
</body>
</html>
"""


def page(refresh_seconds: float) -> str:
    return PAGE.replace("REFRESH_MS", str(int(refresh_seconds * 1000))).replace(
        "REFRESH_SECONDS", f"{refresh_seconds:g}"
    )
