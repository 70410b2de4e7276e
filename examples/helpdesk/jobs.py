"""Re-exports ``conveyor.demo_app.jobs``: the helpdesk ships inside the package (so that
``conveyor demo`` runs from an installed wheel), and this name keeps
``PYTHONPATH=examples conveyor worker helpdesk.jobs:app`` working."""

from conveyor.demo_app.jobs import *  # noqa: F403
