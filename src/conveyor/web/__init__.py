"""The web dashboard and admin HTTP API of Conveyor (needs the ``web`` extra).

::

    from conveyor.web import create_app, serve

    app.mount("/jobs", create_app(conveyor, token="..."))   # in a Starlette/FastAPI app
    serve(conveyor, port=8000)                               # standalone (``conveyor dashboard``)
"""

from conveyor.web.server import create_app, login_link, serve

__all__ = ["create_app", "login_link", "serve"]
