"""Settings of the example project: Django's tasks stored and run by Conveyor.

The database comes from ``CONVEYOR_DATABASE_URL`` (default: the test database on 127.0.0.1),
Conveyor's schema from ``CONVEYOR_SCHEMA`` (default ``conveyor``; run ``conveyor migrate``).
"""

import os
from urllib.parse import parse_qs, unquote, urlsplit

_url = urlsplit(
    os.environ.get("CONVEYOR_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
)
_query = parse_qs(_url.query)

SECRET_KEY = "example-only"
DEBUG = True
USE_TZ = True
INSTALLED_APPS = [
    "django_tasks",  # the task framework; with Django 6, drop it: django.tasks is built in
    "conveyor.integrations.django",  # python manage.py conveyor_worker
]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",  # psycopg 3
        "NAME": _url.path.lstrip("/"),
        "USER": unquote(_url.username or ""),
        "PASSWORD": unquote(_url.password or ""),
        "HOST": _url.hostname or _query.get("host", [""])[0],
        "PORT": str(_url.port or ""),
    }
}
TASKS = {
    "default": {
        "BACKEND": "conveyor.integrations.django.ConveyorBackend",
        "QUEUES": ["default", "emails"],
        "OPTIONS": {
            "schema": os.environ.get("CONVEYOR_SCHEMA", "conveyor"),
            "job_options": {"retry_limit": 0},
        },
    }
}
