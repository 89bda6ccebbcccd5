"""EMQX's /api/v3 (being written)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from quart_trio import QuartTrio

from ternmq.kernel import Service

if TYPE_CHECKING:
    from . import Plugin


def register(app: QuartTrio, plugin: Plugin, service: Service) -> None:
    """Add the routes of /api/v3 to the API's app."""
