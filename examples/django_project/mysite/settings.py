"""Settings of the example project: Django's tasks stored and run by Conveyor.

The database comes from ``CONVEYOR_DATABASE_URL``, else ``CONVEYOR_TEST_DSN``, else the test
database on 127.0.0.1; Conveyor's schema from ``CONVEYOR_SCHEMA`` (default ``conveyor``, made by
``conveyor migrate``). Run the worker with ``python manage.py conveyor_worker``.
"""

import os
from urllib.parse import parse_qs, unquote, urlsplit

import django

_url = urlsplit(
    os.environ.get("CONVEYOR_DATABASE_URL")
    or os.environ.get("CONVEYOR_TEST_DSN")
    or "postgresql://postgres@127.0.0.1:5432/test"
)
_query = parse_qs(_url.query)

SECRET_KEY = "example-only"
DEBUG = True
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "testserver"]
ROOT_URLCONF = "mysite.urls"
USE_TZ = True
INSTALLED_APPS = [
    # The task framework: built into Django 6 as django.tasks; before, the django-tasks package.
    *(["django_tasks"] if django.VERSION < (6,) else []),
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
