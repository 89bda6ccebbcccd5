"""EMQX's /api/v2 (being written)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from quart_trio import QuartTrio

from ternmq.kernel import Service

if TYPE_CHECKING:
    from . import Plugin


def register(app: QuartTrio, plugin: Plugin, service: Service) -> None:
    """Add the routes of /api/v2 to the API's app."""
