"""The Django app of the integration: add ``conveyor.integrations.django`` to ``INSTALLED_APPS``
for the ``conveyor_worker`` management command."""

from __future__ import annotations

from django.apps import AppConfig


class ConveyorConfig(AppConfig):  # type: ignore[misc]  # Django ships no type hints
    """Labelled ``conveyor``: the package's last name, ``django``, would read as Django itself."""

    name = "conveyor.integrations.django"
    label = "conveyor"
    verbose_name = "Conveyor"
