"""Write docs/reference/api.md and docs/reference/cli.md from the code itself.

The signatures come from ``inspect`` and the one-line descriptions from the docstrings, and the
CLI page is the ``--help`` text of every command, so the reference cannot drift from the code:
``tests/docs/test_samples.py`` runs ``render()`` and fails when the committed pages differ.

    .venv/bin/python docs/reference/generate.py          # rewrite both pages
    .venv/bin/python docs/reference/generate.py --check  # exit 1 if a page is out of date
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import inspect
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

HERE = Path(__file__).resolve().parent

# The modules a user imports, and the names the page documents from each (None: ``__all__``).
MODULES: list[tuple[str, list[str] | None, str]] = [
    ("conveyor", None, "The application, the job model and the errors a caller catches."),
    (
        "conveyor.errors",
        [
            "DatabaseUnavailable",
            "NotFound",
            "WaitTimeout",
            "MigrationChecksumMismatch",
            "SchemaTooNew",
        ],
        "Errors raised by the API that `conveyor` does not re-export.",
    ),
    (
        "conveyor.models",
        ["Health", "QueueHealth", "Finding", "StatsMinute"],
        "What `health()`, `diagnose()` and `queue_series()` return.",
    ),
    ("conveyor.events", ["Event"], "What the callbacks of `Conveyor.on(event)` receive."),
    ("conveyor.testing", ["test_database", "IsolatedSchema"], "Test helpers outside pytest."),
    (
        "conveyor.testing.plugin",
        [
            "conveyor_dsn",
            "conveyor_schema",
            "app",
            "app_async",
            "frozen_clock",
            "frozen_app",
            "frozen_app_async",
        ],
        "The pytest fixtures (the plugin is registered as `conveyor`); see docs/testing.md.",
    ),
    ("conveyor.metrics", ["Metrics"], "Prometheus metrics fed by an app's events."),
    ("conveyor.web", None, "The dashboard and admin API (the `web` extra)."),
    ("conveyor.integrations.sqlalchemy", None, "Enqueue in a SQLAlchemy transaction."),
    ("conveyor.integrations.starlette", None, "A worker in a Starlette or FastAPI lifespan."),
    ("conveyor.integrations.django", None, "A backend for Django's tasks framework."),
]


def _annotation(value: Any) -> str:
    if value is inspect.Parameter.empty:
        return ""
    if isinstance(value, str):
        return value
    return inspect.formatannotation(value)


def _default(value: Any) -> str:
    if callable(value) and hasattr(value, "__name__"):
        return str(value.__name__)
    if isinstance(value, enum.Enum):
        return repr(value.value)
    return repr(value)


def signature(func: Callable[..., Any], *, drop_self: bool = False) -> str:
    """``(a: int, *, b: str = 'x') -> T``, with annotations as written and stable defaults."""
    try:
        sig = inspect.signature(func)
    except ValueError:  # an exception class that keeps BaseException's constructor
        return "(*args)"
    parts: list[str] = []
    star_done = False
    params = list(sig.parameters.values())
    if drop_self and params and params[0].name in ("self", "cls"):
        params = params[1:]
    for p in params:
        if p.kind is p.KEYWORD_ONLY and not star_done:
            parts.append("*")
            star_done = True
        if p.kind is p.VAR_POSITIONAL:
            star_done = True
            text = f"*{p.name}"
        elif p.kind is p.VAR_KEYWORD:
            text = f"**{p.name}"
        else:
            text = p.name
        note = _annotation(p.annotation)
        if note:
            text += f": {note}"
        if p.default is not inspect.Parameter.empty:
            text += f" = {_default(p.default)}" if note else f"={_default(p.default)}"
        parts.append(text)
    if any(p.kind is p.POSITIONAL_ONLY for p in params):
        last = max(i for i, p in enumerate(params) if p.kind is p.POSITIONAL_ONLY)
        parts.insert(last + 1, "/")
    result = f"({', '.join(parts)})"
    returns = _annotation(sig.return_annotation)
    return f"{result} -> {returns}" if returns else result


def first_line(obj: Any) -> str:
    """The first paragraph of a docstring on one line, its reStructuredText made Markdown."""
    doc = inspect.getdoc(obj) or ""
    block = doc.split("\n\n", 1)[0]
    text = " ".join(line.strip() for line in block.splitlines()).strip()
    text = re.sub(r":\w+:`~?([\w.]+)`", lambda m: f"`{m.group(1).rsplit('.', 1)[-1]}`", text)
    text = text.replace("``", "`")
    return f"{text[:-2]} (the format is in its docstring)." if text.endswith("::") else text


def _cell(text: str) -> str:
    """Text for a Markdown table cell (a bare ``|`` would end the cell, even in code)."""
    return text.replace("|", r"\|")


def _same_parameters(cls: type, a: str, b: str) -> bool:
    return list(inspect.signature(getattr(cls, a)).parameters) == list(
        inspect.signature(getattr(cls, b)).parameters
    )


def _methods(cls: type) -> Iterator[tuple[str, Any]]:
    # Members Conveyor defines, not those inherited from a framework's base class.
    own = {n for k in cls.__mro__ if k.__module__.startswith("conveyor") for n in vars(k)}
    for name in sorted(own):
        if name.startswith("_"):
            continue
        member = inspect.getattr_static(cls, name)
        if isinstance(member, property) or inspect.isfunction(member):
            yield name, member


def _class_section(qualified: str, cls: type) -> list[str]:
    lines = [f"### `{qualified}`", ""]
    if issubclass(cls, enum.Enum):
        members = ", ".join(f"`{m.name}` (`{m.value!r}`)" for m in cls)
        return [*lines, first_line(cls), "", f"Members: {members}.", ""]
    if dataclasses.is_dataclass(cls):
        lines += [first_line(cls), "", "| field | type |", "| --- | --- |"]
        for field in dataclasses.fields(cls):
            if not field.name.startswith("_"):
                lines.append(f"| `{field.name}` | `{_cell(_annotation(field.type))}` |")
        lines.append("")
        extras = [
            (n, m) for n, m in _methods(cls) if n not in {f.name for f in dataclasses.fields(cls)}
        ]
    elif issubclass(cls, BaseException):
        bases = ", ".join(b.__name__ for b in cls.__bases__)
        return [*lines, f"`{cls.__name__}{signature(cls)}` (subclass of {bases})", "",
                first_line(cls), ""]  # fmt: skip
    else:
        lines += [f"`{cls.__name__}{signature(cls)}`", "", first_line(cls), ""]
        extras = list(_methods(cls))
    if not extras:
        return lines
    names = {n for n, _ in extras}
    lines += ["| member | signature | description |", "| --- | --- | --- |"]
    for name, member in extras:
        sync_name = name.removesuffix("_async")
        if name != sync_name and sync_name in names and _same_parameters(cls, name, sync_name):
            continue  # shown on the sync twin's row
        twin = f"{name}_async"
        shared = twin in names and _same_parameters(cls, name, twin)
        label = f"`{name}`" + (f" / `{twin}`" if shared else "")
        if isinstance(member, property):
            assert member.fget is not None
            sig = f"-> {_annotation(inspect.signature(member.fget).return_annotation)}"
            doc = first_line(member)
        else:
            sig = signature(member, drop_self=True)
            doc = first_line(member)
        lines.append(f"| {label} | `{_cell(sig)}` | {_cell(doc)} |")
    return [*lines, ""]


def _function_section(qualified: str, func: Any) -> list[str]:
    target = getattr(func, "__wrapped__", func)
    return [f"### `{qualified}`", "", f"`{func.__name__}{signature(target)}`", "",
            first_line(func), ""]  # fmt: skip


def _fixture_section(module: Any, name: str) -> list[str]:
    func = getattr(module, name)
    target = getattr(func, "__wrapped__", func)
    doc = first_line(target) or first_line(func)
    return [f"- `{name}`: {doc}"]


# The type aliases the signatures use, with where each is defined.
ALIASES = [
    ("Conn", "conveyor._store.store", "a psycopg `Connection` (`AsyncConn`: an `AsyncConnection`)"),
    ("BatchItem", "conveyor._client_async", "one job of `send_batch`"),
    ("FlowNode", "conveyor.flows", "one node of `flow`"),
    ("HandlerFunc", "conveyor.handlers", "a handler, `def` or `async def`"),
    ("RetryPolicy", "conveyor.backoff", "seconds before the next attempt, or None to stop"),
    ("Listener", "conveyor.events", "a callback of `on(event)`"),
]


def _alias_lines() -> list[str]:
    lines = ["## Type aliases", "", "| alias | is | meaning |", "| --- | --- | --- |"]
    for name, module_name, meaning in ALIASES:
        value = getattr(importlib.import_module(module_name), name)
        shown = str(value).replace("typing.", "").replace("collections.abc.", "")
        shown = re.sub(r"<class '([\w.]+)'>", lambda m: m.group(1).rsplit(".", 1)[-1], shown)
        shown = re.sub(r"\b(?:psycopg|conveyor)\.[\w.]*\.(\w+)", r"\1", shown)
        lines.append(f"| `{name}` | `{_cell(shown)}` | {meaning} |")
    return [*lines, ""]


def render_api() -> str:
    """The text of docs/reference/api.md."""
    lines = [
        "# Python API reference",
        "",
        "<!-- generated by docs/reference/generate.py: do not edit by hand -->",
        "",
        "Every public name, its signature as the code declares it and the first lines of its",
        "docstring. Every I/O method of `Conveyor` has an `_async` twin with the same parameters",
        "(shown on one row as `name` / `name_async`). Job options, queue policies and defaults are",
        "described in [configuration](configuration.md).",
        "",
        *_alias_lines(),
    ]
    for module_name, names, about in MODULES:
        module = importlib.import_module(module_name)
        chosen = list(module.__all__) if names is None else names
        lines += [f"## `{module_name}`", "", about, ""]
        if module_name.endswith(".plugin"):
            for name in chosen:
                lines += _fixture_section(module, name)
            lines.append("")
            continue
        for name in chosen:
            obj = getattr(module, name)
            qualified = f"{module_name}.{name}"
            if inspect.isclass(obj):
                lines += _class_section(qualified, obj)
            else:
                lines += _function_section(qualified, obj)
    return "\n".join(lines).rstrip() + "\n"


def _commands(
    group: click.Command, ctx: click.Context
) -> Iterator[tuple[click.Command, click.Context]]:
    yield group, ctx
    if isinstance(group, click.Group):
        for name in sorted(group.list_commands(ctx)):
            command = group.get_command(ctx, name)
            assert command is not None
            child = click.Context(command, info_name=name, parent=ctx, max_content_width=100)
            yield from _commands(command, child)


def render_cli() -> str:
    """The text of docs/reference/cli.md: the help of every command, as `conveyor` prints it."""
    from conveyor.cli import main

    lines = [
        "# Command line reference",
        "",
        "<!-- generated by docs/reference/generate.py: do not edit by hand -->",
        "",
        "The `--help` text of every `conveyor` command (printed here at 100 columns).",
        "",
        "Global options go before the command: `conveyor --dsn URL --schema S jobs list`; they",
        "default to `CONVEYOR_DATABASE_URL` (then `DATABASE_URL`) and `CONVEYOR_SCHEMA`.",
        "",
        "## Exit codes",
        "",
        "| code | meaning |",
        "| --- | --- |",
        "| 0 | success |",
        "| 1 | a check failed (`migrate --check`, `health`, `doctor`) or a confirmation was "
        "declined |",
        "| 2 | bad usage or input (a malformed id, an unknown option, a bad filter) |",
        "| 3 | the database could not be reached or refused the operation |",
        "| 4 | no such job, queue or schedule |",
        "| 5 | the job's state does not allow the action (cancelling a completed job) |",
        "",
        "Errors are one line on stderr, `conveyor: error: ...`. Operator commands take `--json`",
        "for one line of JSON on stdout.",
        "",
    ]
    root = click.Context(main, info_name="conveyor", max_content_width=100, terminal_width=100)
    for command, ctx in _commands(main, root):
        path = ctx.command_path
        lines += [f"## `{path}`", "", "```text", command.get_help(ctx).rstrip(), "```", ""]
    return "\n".join(lines).rstrip() + "\n"


PAGES: dict[str, Callable[[], str]] = {"api.md": render_api, "cli.md": render_cli}


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for name, render in PAGES.items():
        path = HERE / name
        text = render()
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"out of date: {', '.join(stale)}; run docs/reference/generate.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
