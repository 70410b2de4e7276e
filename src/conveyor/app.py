"""The :class:`Conveyor` application: configuration and the composition root of the public API."""

from __future__ import annotations

from types import TracebackType
from typing import Any, Self

from conveyor._client import Client
from conveyor._client_async import AsyncClient
from conveyor._store.stores import Stores
from conveyor.clock import Clock, database_clock
from conveyor.config import DEFAULT_PAYLOAD_LIMIT, DEFAULT_SCHEMA, Settings
from conveyor.errors import UnknownOption
from conveyor.options import DEFAULTABLE, check_defaultable, check_int, check_schema_name


class Conveyor(Client, AsyncClient):
    """A Conveyor application: durable background jobs in one PostgreSQL schema.

    ``dsn`` defaults to ``CONVEYOR_DATABASE_URL``, then ``DATABASE_URL`` (read on first use).
    The job defaults given here (``priority``, ``retry_limit``, ``retry_delay``, ``retry_backoff``,
    ``retry_delay_max``, ``expire_in``, ``retention``) apply where neither the job nor its queue
    sets one. Every I/O method exists twice: ``send`` and ``send_async``, and so on.
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        schema: str = DEFAULT_SCHEMA,
        max_payload_bytes: int = DEFAULT_PAYLOAD_LIMIT,
        pool_min_size: int = 1,
        pool_max_size: int = 10,
        clock: Clock = database_clock,
        **defaults: Any,
    ) -> None:
        self._settings = Settings(
            dsn=dsn,
            schema=check_schema_name(schema),
            defaults=check_defaultable(_known_defaults(defaults)),
            max_payload_bytes=check_int("max_payload_bytes", max_payload_bytes, 1, 256 * 2**20),
            pool_min_size=check_int("pool_min_size", pool_min_size, 0, 1000),
            pool_max_size=check_int("pool_max_size", pool_max_size, 1, 1000),
            clock=clock,
        )
        self._stores = Stores(self._settings)

    @property
    def schema(self) -> str:
        """The PostgreSQL schema that holds this app's tables."""
        return self._settings.schema

    @property
    def settings(self) -> Settings:
        """The app's configuration."""
        return self._settings

    def __repr__(self) -> str:
        return f"Conveyor(schema={self.schema!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close_async()


def _known_defaults(defaults: dict[str, Any]) -> dict[str, Any]:
    for name in defaults:
        if name not in DEFAULTABLE:
            raise UnknownOption(
                f"unknown Conveyor option {name!r}; job defaults are {', '.join(DEFAULTABLE)}"
            )
    return defaults
