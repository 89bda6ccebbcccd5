"""What an admin command returns: a table or a text, each with its JSON form
(``ternmq-admin --format=json``, the HTTP API) and its human rendering."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs


@attrs.frozen
class Table:
    """Rows of a table; every row has the same keys (the column names)."""

    rows: tuple[Mapping[str, Any], ...]
    columns: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"type": "table", "table": [dict(row) for row in self.rows]}

    def render(self) -> str:
        columns = list(self.columns) or (list(self.rows[0]) if self.rows else [])
        if not columns:
            return ""
        cells = [[cell_text(row.get(c)) for c in columns] for row in self.rows]
        widths = [
            max([len(c)] + [max((len(line) for line in cell[i].split("\n")), default=0) for cell in cells])
            for i, c in enumerate(columns)
        ]
        rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
        lines = [rule, "|" + "|".join(f" {c:<{w}} " for c, w in zip(columns, widths, strict=True)) + "|", rule]
        for cell in cells:
            parts = [value.split("\n") for value in cell]
            height = max(len(p) for p in parts)
            for index in range(height):
                lines.append(
                    "|"
                    + "|".join(
                        f" {(p[index] if index < len(p) else ''):<{w}} " for p, w in zip(parts, widths, strict=True)
                    )
                    + "|"
                )
        lines.append(rule)
        return "\n".join(lines)


@attrs.frozen
class Text:
    text: str

    def to_json(self) -> dict[str, Any]:
        return {"type": "text", "text": self.text}

    def render(self) -> str:
        return self.text


def cell_text(value: Any) -> str:
    """A value as a table cell shows it (and as a column filter compares it)."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return "\n".join(cell_text(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
