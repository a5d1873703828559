"""Pytest plugin: a local aiosmtpd server that records what it receives and fails on request."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

Stage = Literal["rcpt", "data"]


@dataclass(frozen=True)
class ReceivedMail:
    """One accepted transaction: envelope sender, envelope recipients, raw message bytes."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    content: bytes


class LocalSmtpServer:
    """aiosmtpd handler plus where to reach it; ``fail()`` scripts replies per recipient."""

    def __init__(self, *, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.messages: list[ReceivedMail] = []
        self.connections = 0  # sessions greeted with EHLO
        self._replies: dict[tuple[Stage, str], str] = {}
        self._controller: Controller | None = None
        self.smtputf8 = False

    def fail(self, address: str, reply: str, *, at: Stage = "rcpt") -> None:
        """Answer ``reply`` (e.g. ``"550 5.1.1 No such user"``) when ``address`` reaches ``at``."""
        self._replies[(at, address.lower())] = reply

    def recover(self, address: str) -> None:
        """Stop failing ``address``: it is accepted again at every stage."""
        for stage in ("rcpt", "data"):
            self._replies.pop((stage, address.lower()), None)

    def start(self) -> None:
        self._controller = Controller(
            self,
            hostname=self.host,
            port=self.port,
            server_hostname="localhost",
            enable_SMTPUTF8=self.smtputf8,
        )
        self._controller.start()

    def restart(self, *, smtputf8: bool) -> None:
        """Start again, offering SMTPUTF8 (RFC 6531) or not."""
        self.stop()
        self.smtputf8 = smtputf8
        self.start()

    def stop(self) -> None:
        """Stop listening and drop every open connection."""
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list
    ) -> list:
        self.connections += 1
        session.host_name = hostname  # aiosmtpd leaves this to a handler that takes EHLO
        return responses

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list
    ) -> str:
        reply = self._replies.get(("rcpt", address.lower()))
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        for address in envelope.rcpt_tos:
            reply = self._replies.get(("data", address.lower()))
            if reply:
                return reply
        content = envelope.original_content or b""
        self.messages.append(
            ReceivedMail(str(envelope.mail_from), tuple(envelope.rcpt_tos), content)
        )
        return "250 Message accepted for delivery"


def _free_port(host: str) -> int:
    # aiosmtpd's Controller needs the port up front (it probes it after starting).
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def smtp_server() -> Iterator[LocalSmtpServer]:
    """A fresh SMTP server on 127.0.0.1 (plain, no auth) for one test."""
    server = LocalSmtpServer(host="127.0.0.1", port=_free_port("127.0.0.1"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
