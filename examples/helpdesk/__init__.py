"""InsightDesk, the helpdesk of ``conveyor demo``: its code is ``src/conveyor/demo_app/``."""
