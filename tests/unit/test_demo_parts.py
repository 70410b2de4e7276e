"""Parts of ``conveyor demo`` that need no database: the mail sink and the browser decision."""

from __future__ import annotations

import asyncio
import importlib
import smtplib
from email.message import EmailMessage

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

# By module name: the package's attribute ``demo`` is the click command of the same name.
demo = importlib.import_module("conveyor.cli.demo")


def send(port: int, subject: str, body: str) -> None:
    message = EmailMessage()
    message["From"] = "noreply@insightdesk.example"
    message["To"] = "ada@customer.example"
    message["Subject"] = subject
    message.set_content(body)
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.send_message(message)


async def test_the_sink_keeps_what_smtp_delivers_and_shows_it_escaped() -> None:
    sink = demo.MailSink(keep=2)
    server = await sink.start("127.0.0.1")
    port = server.sockets[0].getsockname()[1]
    try:
        for n in range(3):
            await asyncio.to_thread(send, port, f"<b>ticket {n}</b>", f"body {n}")
    finally:
        server.close()
        await server.wait_closed()
    assert sink.received == 3
    assert [m["subject"] for m in sink.messages] == ["<b>ticket 2</b>", "<b>ticket 1</b>"]
    assert sink.messages[0]["to"] == "ada@customer.example"
    assert sink.messages[0]["body"].strip() == "body 2"

    app = Starlette(routes=[Mount("/mail", routes=sink.routes())])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://demo") as http:
        listing = (await http.get("/mail/messages.json")).json()
        page = (await http.get("/mail/")).text
    assert listing["received"] == 3
    assert len(listing["messages"]) == 2
    assert "&lt;b&gt;ticket 2&lt;/b&gt;" in page
    assert "<b>ticket" not in page
    assert "3 emails received" in page


@pytest.mark.parametrize(
    ("platform", "env", "expected"),
    [
        ("linux", {}, False),
        ("linux", {"DISPLAY": ":0"}, True),
        ("linux", {"WAYLAND_DISPLAY": "wayland-0"}, True),
        ("darwin", {}, True),
        ("win32", {}, True),
    ],
)
def test_a_browser_opens_only_where_it_has_a_window(
    monkeypatch: pytest.MonkeyPatch, platform: str, env: dict[str, str], expected: bool
) -> None:
    monkeypatch.setattr(demo.sys, "platform", platform)
    for name in ("DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert demo.has_display() is expected
