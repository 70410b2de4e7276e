"""Re-exports ``conveyor.demo_app.service``: the helpdesk ships inside the package (so that
``conveyor demo`` runs from an installed wheel), and this name keeps
``PYTHONPATH=examples conveyor worker helpdesk.jobs:app`` working."""

from conveyor.demo_app.service import *  # noqa: F403
