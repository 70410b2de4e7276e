"""Build the dashboard and admin API as one Starlette app, and serve it with uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sys
from collections.abc import AsyncIterator, Awaitable, Callable

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from conveyor.app import Conveyor
from conveyor.metrics import Metrics
from conveyor.web.api import Api, error_response
from conveyor.web.pages import Pages
from conveyor.web.security import (
    LOGIN_LINK_SECONDS,
    SESSION_COOKIE,
    TOKEN_ENV,
    Guard,
    HttpError,
    derive_secret,
    resolve_token,
)

# A dashboard session lasts a working day.
SESSION_SECONDS = 12 * 3600


def create_app(
    conveyor: Conveyor,
    *,
    token: str | None = None,
    secret_key: str | None = None,
    metrics: bool = True,
) -> Starlette:
    """The dashboard, the admin API under ``/api`` and (with ``metrics``) ``/metrics``, as one
    Starlette app; mount it anywhere: ``app.mount("/jobs", create_app(conveyor))``.

    ``token`` (else ``CONVEYOR_DASHBOARD_TOKEN``) is the access token: API clients send it as
    ``Authorization: Bearer <token>``, people type it into the login page. Without one this
    raises :class:`~conveyor.errors.ConfigurationError`: the dashboard never runs open.
    ``secret_key`` signs the session cookie (default: derived from the token). The app uses
    the ``*_async`` methods of ``conveyor`` and leaves closing it to the caller. The metrics
    read counts over a connection of their own, closed by this app's lifespan; a mounted app's
    lifespan does not run, so close ``app.state.metrics`` on shutdown there.
    """
    resolved = resolve_token(token) or ""
    guard = Guard(resolved)
    routes: list[BaseRoute] = [*Api(conveyor, guard).routes()]
    collector = Metrics(conveyor) if metrics else None
    if collector is not None:
        collector.install()
        routes.append(Route("/metrics", _metrics_endpoint(guard, collector), name="metrics"))
    routes.extend(Pages(conveyor, guard).routes())

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if collector is not None:
                collector.close()

    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(
                SessionMiddleware,
                secret_key=secret_key or derive_secret(resolved),
                session_cookie=SESSION_COOKIE,
                max_age=SESSION_SECONDS,
                same_site="lax",
            )
        ],
        exception_handlers={HTTPException: _http_error},
        lifespan=lifespan,
    )
    app.state.metrics = collector
    app.state.login_links = guard.links
    return app


def login_link(dashboard: Starlette, url: str, *, seconds: float = LOGIN_LINK_SECONDS) -> str:
    """A link that signs one browser into ``dashboard`` (an app of :func:`create_app`, served
    at ``url``) once, within ``seconds``: a ticket exchanged for the session cookie, so the
    access token never appears in a URL. The process serving the app must be the one that
    issued it."""
    ticket = dashboard.state.login_links.issue(seconds)
    return f"{url.rstrip('/')}/login/link?ticket={ticket}"


def _metrics_endpoint(guard: Guard, collector: Metrics) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            guard.require(request)
        except HttpError as exc:
            return error_response(exc.status, exc.kind, exc.message)
        # render() reads counts over a blocking connection.
        body, content_type = await run_in_threadpool(collector.render)
        return Response(body, media_type=content_type)

    return endpoint


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    path = request.scope.get("route_path") or request.url.path
    root = str(request.scope.get("root_path", ""))
    if str(path).removeprefix(root).startswith("/api"):
        kind = "NotFound" if exc.status_code == 404 else "HTTPError"
        return error_response(exc.status_code, kind, str(exc.detail))
    return PlainTextResponse(str(exc.detail), status_code=exc.status_code, headers=exc.headers)


def serve(
    conveyor: Conveyor, *, host: str = "127.0.0.1", port: int = 8000, token: str | None = None
) -> None:
    """Serve the dashboard with uvicorn until interrupted (``conveyor dashboard``).

    Without ``token`` or ``CONVEYOR_DASHBOARD_TOKEN``, a random token is made for this run and
    printed. The app's async pool is closed on the way out.
    """
    token = resolve_token(token)
    if token is None:
        token = secrets.token_urlsafe(24)
        print(
            f"No dashboard token was given (token= or {TOKEN_ENV}); generated one for this run:\n"
            f"  {token}",
            file=sys.stderr,
            flush=True,
        )
    app = create_app(conveyor, token=token)
    print(f"Conveyor dashboard: http://{host}:{port}/", file=sys.stderr, flush=True)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    # uvicorn shuts down gracefully on Ctrl-C, then raises the interrupt again: here that is the
    # normal way out, not an error.
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(server, conveyor))


async def _serve(server: uvicorn.Server, conveyor: Conveyor) -> None:
    try:
        await server.serve()
    finally:
        await conveyor.close_async()
