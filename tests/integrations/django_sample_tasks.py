"""Tasks of the Django backend's tests that the example project has no reason to show.

Imported by the tests after Django is set up (declaring a task reads the task settings)."""

from __future__ import annotations

from conveyor.integrations.django.framework import task

runs: list[str] = []


@task()
def returns_a_set() -> set[int]:
    runs.append("returns_a_set")
    return {1, 2}
