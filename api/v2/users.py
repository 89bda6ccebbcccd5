"""The dashboard's users of /api/v2 (``plugin.apps`` entries of kind "user"): listed,
added, changed, removed, logged in, and their passwords changed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..apps import ROLES, App
from ..keys import NotCommitted
from .envelope import (
    BAD_LOGIN,
    BAD_TYPE,
    EMPTY_LOGIN,
    NO_USER,
    OLD_PASSWORD,
    UNDELETABLE,
    UNKNOWN,
    USER_EXISTS,
    Call,
    Handlers,
    Refused,
    param,
)


def login(body: Mapping[str, Any], name: str, secret: str) -> tuple[str, str]:
    username, password = param(body, name, str), param(body, secret, str)
    if not username or not password:
        raise Refused(EMPTY_LOGIN, f"{name} and {secret} must not be empty")
    return username, password


class Users(Handlers):
    """The users' routes (``users``, ``auth``, ``change_pwd``)."""

    def user(self, name: str) -> App:
        app = self.plugin.apps.get(name)
        if app is None or app.kind != "user":
            raise Refused(NO_USER, f"User not found: {name!r}")
        return app

    async def change(self, change: Callable[[], object]) -> None:
        """Make a change of the users and wait until it is durable; a 503 (code 102)
        when it cannot be saved (no store keeps the users now: nothing changed) or the
        store failed to commit it (in force all the same; the store retries)."""
        try:
            change()
        except OSError as exc:
            raise Refused(UNKNOWN, f"the users cannot be saved: {exc}", 503) from None
        try:
            await self.plugin.apps.commit()
        except NotCommitted as exc:
            raise Refused(UNKNOWN, str(exc), 503) from None

    def users(self, call: Call) -> Any:
        rows = [{"username": app.name, "tags": app.desc or app.role} for app in self.plugin.apps if app.kind == "user"]
        return next((row for row in rows if row["username"] == call.params[0]), []) if call.params else rows

    async def add_user(self, call: Call) -> Any:
        username, password = login(call.body, "username", "password")
        tags = param(call.body, "tags", str, "")
        if self.plugin.apps.get(username) is not None:
            raise Refused(USER_EXISTS, f"User already exist: {username!r}")
        role = tags if tags in ROLES else "administrator"  # EMQ 2's users could all do everything
        try:
            await self.change(
                lambda: self.plugin.apps.create(
                    username, kind="user", key=username, secret=password, role=role, desc=tags
                )
            )
        except ValueError as exc:
            raise Refused(USER_EXISTS if "exists" in str(exc) else BAD_TYPE, str(exc)) from None
        return []

    def last_administrator(self, app: App) -> bool:
        return [a for a in self.plugin.apps if a.kind == "user" and a.role == "administrator"] == [app]

    async def update_user(self, call: Call) -> Any:
        app, tags = self.user(call.params[0]), param(call.body, "tags", str)
        role = tags if tags in ROLES else app.role
        if role != "administrator" and self.last_administrator(app):
            raise Refused(UNDELETABLE, f"{app.name} is the last administrator and keeps that role")
        await self.change(lambda: self.plugin.apps.update(app.name, desc=tags, role=role))
        return []

    async def delete_user(self, call: Call) -> Any:
        if call.params[0] == "admin":
            raise Refused(UNDELETABLE, "admin cannot be deleted")
        app = self.user(call.params[0])
        if self.last_administrator(app):
            raise Refused(UNDELETABLE, f"{app.name} is the last administrator and cannot be deleted")
        await self.change(lambda: self.plugin.apps.delete(app.name))
        return []

    async def auth(self, call: Call) -> Any:
        if await self.plugin.apps.authenticate(*login(call.body, "username", "password"), kind="user") is None:
            raise Refused(BAD_LOGIN, "Username or password error")
        return []

    async def change_pwd(self, call: Call) -> Any:
        body = call.body
        if "old_pwd" not in body and "oldpassword" in body:  # the names EMQ 2's documentation shows
            body = {"old_pwd": body.get("oldpassword"), "new_pwd": body.get("password")}
        old, new = login(body, "old_pwd", "new_pwd")
        app = self.user(call.params[0])
        if await self.plugin.apps.authenticate(app.key, old, kind="user") is None:
            raise Refused(OLD_PASSWORD, "OldPassword error")
        await self.change(lambda: self.plugin.apps.update(app.name, secret=new))
        return []
