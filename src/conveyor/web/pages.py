"""The server-rendered dashboard: login, overview, jobs, dead letters, schedules, workers.

Pages only read; their buttons call the admin API (with the session's CSRF token) from
``static/dashboard.js``, which asks for confirmation first.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote
from uuid import UUID

import jinja2
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from conveyor.app import Conveyor
from conveyor.errors import InvalidOption
from conveyor.models import JobState
from conveyor.web.activity import (
    CLAIMED,
    RUNNING,
    attempts,
    flow_tree,
    phase,
    split_active,
    unstarted_claims,
)
from conveyor.web.api import (
    DEFAULT_LIMIT,
    conveyor_error_status,
    error_kind,
    int_param,
    next_run,
    states_param,
    str_param,
)
from conveyor.web.encode import job_json, plain, stats_json
from conveyor.web.security import (
    CSRF_FIELD,
    Guard,
    HttpError,
    csrf_token,
    is_cross_site,
    safe_next,
)

HERE = Path(__file__).parent
# The overview's columns: "active" is shown as claimed and running apart.
OVERVIEW_STATES = ["waiting", "created", "retry", "completed", "cancelled", "failed"]
# Active jobs read for the claimed/running split; more than this many at once is a fleet
# whose split the overview shows for the oldest claims only.
ACTIVE_LIMIT = 2000
Page = Callable[[Request], Awaitable[Response]]
NAV = [("overview", "Queues"), ("jobs", "Jobs"), ("dead", "Dead letters"),
       ("schedules", "Schedules"), ("workers", "Workers")]  # fmt: skip


def base_path(request: Request) -> str:
    """Where the dashboard is mounted ('' at the root)."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def pretty(value: Any) -> str:
    """A JSON value indented for a <pre> block."""
    return json.dumps(plain(value), indent=2, ensure_ascii=False, sort_keys=True)


def ago(moment: datetime | str | None) -> str:
    """How long ago ``moment`` was, shortly ('in 5 s' for the future)."""
    if moment is None:
        return "-"
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    seconds = (datetime.now(UTC) - moment).total_seconds()
    future = seconds < 0
    seconds = abs(seconds)
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            text = f"{seconds / size:.0f} {unit}"
            break
    else:
        text = f"{seconds:.0f} s"
    return f"in {text}" if future else f"{text} ago"


def stamp(moment: datetime | str | None) -> str:
    """A timestamp in UTC to the second."""
    if moment is None:
        return "-"
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def make_templates() -> Jinja2Templates:
    """The templates, autoescaped whatever the file name."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(pretty=pretty, ago=ago, stamp=stamp)
    return Jinja2Templates(env=env)


class Pages:
    """The dashboard's pages over one application."""

    def __init__(self, conveyor: Conveyor, guard: Guard) -> None:
        self.conveyor = conveyor
        self.guard = guard
        self.templates = make_templates()

    def routes(self) -> list[BaseRoute]:
        """The page routes and the static files."""
        return [
            Route("/login", self.login_form, methods=["GET"], name="login"),
            Route("/login", self.login, methods=["POST"], name="login_post"),
            Route("/login/link", self.login_link, methods=["GET"], name="login_link"),
            Route("/logout", self.logout, methods=["POST"], name="logout"),
            Route("/", self.page(self.overview), methods=["GET"], name="overview"),
            Route("/jobs", self.page(self.jobs), methods=["GET"], name="jobs"),
            Route("/jobs/{id}", self.page(self.job), methods=["GET"], name="job"),
            Route("/jobs/{id}/flow", self.page(self.flow), methods=["GET"], name="flow"),
            Route("/dead", self.page(self.dead), methods=["GET"], name="dead"),
            Route("/schedules", self.page(self.schedules), methods=["GET"], name="schedules"),
            Route("/workers", self.page(self.workers), methods=["GET"], name="workers"),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ]

    def render(
        self, request: Request, name: str, context: dict[str, Any], status: int = 200
    ) -> Response:
        """Render a template with what every page needs."""
        full = {
            "base": base_path(request),
            "csrf": csrf_token(request),
            "nav": NAV,
            "current": name.removesuffix(".html"),
            "now": datetime.now(UTC).isoformat(),
            **context,
        }
        return self.templates.TemplateResponse(request, name, full, status_code=status)

    def page(self, view: Page) -> Page:
        """Send visitors without a session to the login page; show errors as a page."""

        async def run(request: Request) -> Response:
            if self.guard.credential(request) is None:
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return RedirectResponse(
                    f"{base_path(request)}/login?next={_quote(target)}", status_code=303
                )
            try:
                return await view(request)
            except Exception as exc:
                status = conveyor_error_status(exc)
                if status is None:
                    raise
                context = {"status": status, "kind": error_kind(exc), "message": str(exc)}
                return self.render(request, "error.html", context, status)

        return run

    # -- session -----------------------------------------------------------------------------

    async def login_form(self, request: Request) -> Response:
        target = safe_next(request.query_params.get("next"), f"{base_path(request)}/")
        return self.render(request, "login.html", {"next": target, "message": None})

    async def login(self, request: Request) -> Response:
        form = await request.form()
        given = form.get("token")
        target = safe_next(_text(form.get("next")), f"{base_path(request)}/")
        if is_cross_site(request):
            context = {"next": target, "message": "Cross-site login refused."}
            return self.render(request, "login.html", context, 403)
        if not isinstance(given, str) or not self.guard.token_matches(given):
            context = {"next": target, "message": "Wrong token."}
            return self.render(request, "login.html", context, 401)
        self.guard.log_in(request)
        return RedirectResponse(target, status_code=303)

    async def login_link(self, request: Request) -> Response:
        """Exchange a one-time ticket for a session (the link ``conveyor demo`` prints)."""
        target = safe_next(request.query_params.get("next"), f"{base_path(request)}/")
        ticket = request.query_params.get("ticket", "")
        if not self.guard.links.redeem(ticket):
            message = "This login link was used already or has expired: log in with the token."
            response = self.render(request, "login.html", {"next": target, "message": message}, 401)
        else:
            self.guard.log_in(request)
            response = RedirectResponse(target, status_code=303)
        # The ticket is in this URL: no page it leads to may send it on, and no cache keep it.
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-store"
        return response

    async def logout(self, request: Request) -> Response:
        form = await request.form()
        credential = self.guard.credential(request)
        if credential is not None:
            try:
                self.guard.check_write(request, credential, _text(form.get(CSRF_FIELD)))
            except HttpError as exc:
                context = {"status": exc.status, "kind": exc.kind, "message": exc.message}
                return self.render(request, "error.html", context, exc.status)
            request.session.clear()
        return RedirectResponse(f"{base_path(request)}/login", status_code=303)

    # -- pages -------------------------------------------------------------------------------

    async def _active(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]], set[str]]:
        """The workers, the active jobs, and the claims that wait in prefetch buffers."""
        workers = plain(await self.conveyor.list_workers_async())
        active = await self.conveyor.list_jobs_async(
            None, [JobState.ACTIVE.value], limit=ACTIVE_LIMIT, order="asc"
        )
        return workers, [job_json(j) for j in active], unstarted_claims(workers)

    async def overview(self, request: Request) -> Response:
        queues = await self.conveyor.list_queues_async()
        stats = {s.queue: stats_json(s) for s in await self.conveyor.queue_stats_async()}
        _, active, unstarted = await self._active()
        phases = split_active(active, unstarted)
        rows = [
            {
                "queue": plain(q),
                "stats": stats.get(q.name),
                "phases": phases.get(q.name, {CLAIMED: 0, RUNNING: 0}),
            }
            for q in queues
        ]
        context = {"rows": rows, "states": OVERVIEW_STATES}
        return self.render(request, "overview.html", context)

    async def jobs(self, request: Request) -> Response:
        params = request.query_params
        unknown = set(params) - {"queue", "state", "search", "offset"}
        if unknown:
            raise InvalidOption(f"unknown filter {sorted(unknown)[0]!r}")
        filters = {
            "queue": str_param(params, "queue"),
            "state": str_param(params, "state"),
            "search": str_param(params, "search"),
        }
        offset = int_param(params, "offset", 0)
        jobs = await self.conveyor.list_jobs_async(
            filters["queue"],
            states_param(params),
            search=filters["search"],
            limit=DEFAULT_LIMIT,
            offset=offset,
        )
        queues = [q.name for q in await self.conveyor.list_queues_async()]
        context = {
            "jobs": [job_json(j) for j in jobs],
            "filters": filters,
            "queues": queues,
            "states": [s.value for s in JobState],
            "offset": offset,
            "limit": DEFAULT_LIMIT,
        }
        return self.render(request, "jobs.html", context)

    async def job(self, request: Request) -> Response:
        job = job_json(await self.conveyor.get_job_async(request.path_params["id"]))
        workers = plain(await self.conveyor.list_workers_async())
        unstarted = unstarted_claims(workers)
        dependencies = [job_json(j) for j in await self.conveyor.get_jobs_async(job["depends_on"])]
        dependants = [job_json(j) for j in await self.conveyor.list_dependants_async(job["id"])]
        context = {
            "job": job,
            "phase": phase(job, unstarted),
            "attempts": attempts(job, unstarted, datetime.now(UTC)),
            "dependencies": dependencies,
            "dependants": dependants,
        }
        return self.render(request, "job.html", context)

    async def flow(self, request: Request) -> Response:
        given = request.path_params["id"]
        jobs = [job_json(j) for j in await self.conveyor.get_flow_async(given)]
        workers = plain(await self.conveyor.list_workers_async())
        context = {
            # get_flow_async accepted the id, so it parses.
            "focus": str(UUID(given)),
            "tree": flow_tree(jobs),
            "count": len(jobs),
            "unstarted": unstarted_claims(workers),
        }
        return self.render(request, "flow.html", context)

    async def dead(self, request: Request) -> Response:
        queue = str_param(request.query_params, "queue")
        offset = int_param(request.query_params, "offset", 0)
        jobs = await self.conveyor.list_dead_async(queue, limit=DEFAULT_LIMIT, offset=offset)
        context = {
            "jobs": [job_json(j) for j in jobs],
            "queue": queue,
            "queues": [q.name for q in await self.conveyor.list_queues_async()],
            "offset": offset,
            "limit": DEFAULT_LIMIT,
        }
        return self.render(request, "dead.html", context)

    async def schedules(self, request: Request) -> Response:
        now = datetime.now(UTC)
        found = await self.conveyor.list_schedules_async()
        rows = [{**plain(s), "next_run": next_run(s, now)} for s in found]
        return self.render(request, "schedules.html", {"schedules": rows})

    async def workers(self, request: Request) -> Response:
        workers, active, unstarted = await self._active()
        now = datetime.now(UTC)
        for worker in workers:
            beat = datetime.fromisoformat(worker["heartbeat_at"])
            worker["heartbeat_age"] = max(0.0, (now - beat).total_seconds())
            held = [j for j in active if j["worker_id"] == worker["id"]]
            worker["running"] = [j for j in held if phase(j, unstarted) == RUNNING]
            worker["claimed"] = [j for j in held if phase(j, unstarted) == CLAIMED]
        return self.render(request, "workers.html", {"workers": workers})


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _quote(path: str) -> str:
    return quote(path, safe="/")
