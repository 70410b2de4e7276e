"""The examples at the end of each command's ``--help``, in one place so they read as a set.

``tests/e2e/test_cli_send.py`` walks every command and fails on one without an example; a command
that sets its own ``epilog`` keeps it.
"""

from __future__ import annotations

import click

EXAMPLES: dict[str, tuple[str, ...]] = {
    "": (
        "conveyor --dsn postgresql://localhost/app migrate",
        "CONVEYOR_DATABASE_URL=postgresql://localhost/app conveyor status",
        "conveyor demo",
    ),
    "migrate": ("conveyor migrate", "conveyor migrate --check", "conveyor migrate --sql > up.sql"),
    "worker": (
        "conveyor worker myapp.jobs:app",
        "conveyor worker myapp.jobs:app --queues email.send,reports --concurrency 20",
        "conveyor worker myapp.jobs:app --processes 4 --metrics-port 9100",
    ),
    "status": ("conveyor status", "conveyor status --json | jq '.queues[].counts'"),
    "queues": ("conveyor queues", "conveyor queues --json", "conveyor queues pause reports"),
    "queues pause": ("conveyor queues pause reports", "conveyor queues pause reports --json"),
    "queues resume": ("conveyor queues resume reports",),
    "queues fair": ("conveyor queues fair exports", "conveyor queues fair exports --off --json"),
    "schedules": ("conveyor schedules",),
    "workers": ("conveyor workers --stale-after 60",),
    "jobs": ("conveyor jobs list --queue email.send --state failed", "conveyor jobs watch"),
    "jobs list": (
        "conveyor jobs list --queue email.send --state failed --since 2h",
        "conveyor jobs list --search ada@example.com --json",
    ),
    "jobs cancel": (
        "conveyor jobs cancel --queue email.send --search @spam.example --dry-run",
        "conveyor jobs cancel --queue email.send --state created --older-than 2h --yes",
    ),
    "jobs retry": ("conveyor jobs retry --queue email.send --state failed --older-than 1h",),
    "jobs delete": ("conveyor jobs delete --state completed --state cancelled --older-than 7d",),
    "jobs reprioritize": (
        "conveyor jobs reprioritize --queue reports --group-key tenant-7 --priority 10 --yes",
    ),
    "jobs show": ("conveyor jobs show 01a2389b-9a18-7000-a13d-ed03ab59961b",),
    "jobs watch": (
        "conveyor jobs watch --queue email.send",
        "conveyor jobs watch 01a2389b-9a18-7000-a13d-ed03ab59961b",
        "conveyor jobs watch --once --json",
    ),
    "retry": ("conveyor retry 01a2389b-9a18-7000-a13d-ed03ab59961b",),
    "cancel": ("conveyor cancel 01a2389b-9a18-7000-a13d-ed03ab59961b",),
    "dead": (
        "conveyor dead list --queue email.send",
        "conveyor dead retry --queue email.send --all",
    ),
    "dead list": ("conveyor dead list --queue email.send --limit 10",),
    "dead retry": (
        "conveyor dead retry 01a2389b-9a18-7000-a13d-ed03ab59961b",
        "conveyor dead retry --queue email.send --all",
    ),
    "dead purge": ("conveyor dead purge --older-than 7d --yes", "conveyor dead purge --queue q"),
    "health": ("conveyor health --min-workers 1 --max-wait 300",),
    "doctor": ("conveyor doctor", "conveyor doctor --json"),
    "dashboard": ("CONVEYOR_DASHBOARD_TOKEN=s3cret conveyor dashboard --host 0.0.0.0 --port 8080",),
    "dev": ("conveyor dev", "conveyor dev --check"),
    "demo": (
        "conveyor demo",
        "conveyor demo --duration 60 --no-browser --port 0",
        "conveyor demo --embedded --processes 2",
    ),
}


def epilog(lines: tuple[str, ...]) -> str:
    """An ``Examples:`` block that click prints as written (``\\b`` keeps its line breaks)."""
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)


def attach(group: click.Group, path: str = "") -> None:
    """Give each command under ``group`` its examples, unless it has an epilog of its own."""
    lines = EXAMPLES.get(path)
    if lines and not group.epilog:
        group.epilog = epilog(lines)
    for name, command in group.commands.items():
        sub = f"{path} {name}".strip()
        if isinstance(command, click.Group):
            attach(command, sub)
        elif not command.epilog and EXAMPLES.get(sub):
            command.epilog = epilog(EXAMPLES[sub])
