"""InsightDesk, the helpdesk of the seeds, on Conveyor: welcome and ticket emails, SLA checks at
each deadline, hourly auto-close, a weekday digest, CSV exports with progress, a flaky CRM and a
customer webhook that is down. ``conveyor demo`` runs it end to end; read ``jobs.py`` first."""
