"""Which task framework the backend implements: Django's own ``django.tasks`` when Django has it
(Django 6), else the ``django-tasks`` package. Where Django 6 is not installed, a stand-in
``django.tasks`` (the package's objects under Django's names) shows that path is taken."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Iterator
from types import ModuleType

import pytest

from conveyor.integrations.django import framework


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, ModuleType]]:
    """``django.tasks`` and its submodules, built from ``django_tasks``, in ``sys.modules``."""
    if importlib.util.find_spec("django.tasks") is not None:
        pytest.skip("this Django has django.tasks: the real one is tested")
    package = importlib.import_module("django_tasks")
    sources = {
        "django.tasks": package,
        "django.tasks.backends.base": importlib.import_module("django_tasks.backends.base"),
        "django.tasks.base": importlib.import_module("django_tasks.base"),
        "django.tasks.exceptions": importlib.import_module("django_tasks.exceptions"),
        "django.tasks.signals": importlib.import_module("django_tasks.signals"),
    }
    modules = {}
    for name, source in sources.items():
        module = ModuleType(name)
        module.__dict__.update({k: v for k, v in vars(source).items() if not k.startswith("__")})
        modules[name] = module
        monkeypatch.setitem(sys.modules, name, module)
    # Django 6 names the invalid-task error InvalidTask; the package, InvalidTaskError.
    modules["django.tasks.exceptions"].InvalidTask = package.exceptions.InvalidTaskError
    yield modules
    monkeypatch.undo()
    importlib.reload(framework)


def test_django_tasks_is_preferred_when_django_has_it(stand_in: dict[str, ModuleType]) -> None:
    found = importlib.reload(framework)
    assert found.FRAMEWORK == "django.tasks"
    assert found.task_backends is stand_in["django.tasks"].task_backends
    assert found.InvalidTask is stand_in["django.tasks.exceptions"].InvalidTask
    assert found.BaseTaskBackend is stand_in["django.tasks.backends.base"].BaseTaskBackend


def test_the_package_is_used_without_django_tasks() -> None:
    if importlib.util.find_spec("django.tasks") is not None:
        pytest.skip("this Django has django.tasks")
    assert framework.FRAMEWORK == "django_tasks"
    assert framework.task_backends is importlib.import_module("django_tasks").task_backends
