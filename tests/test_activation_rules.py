"""Activation mail's pure rules: the status check, the link, the token, the mail's HTML."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import parse_qsl, urlsplit

import pytest

from lifecycle.errors import ConfigError
from lifecycle.processes.activation_mail.mail import activation_mail
from lifecycle.processes.activation_mail.rules import (
    Decision,
    Status,
    activation_link,
    check_status,
    new_token,
    sends,
)
from lifecycle.settings import ActivationMailSettings, Settings, get_settings
from tests.support.clock import NOW


@pytest.mark.parametrize(
    ("status", "lease_until", "decision"),
    [
        ("NONE", None, Decision.SEND),
        ("SENDING", NOW + timedelta(minutes=1), Decision.BEING_SENT),
        ("SENDING", NOW - timedelta(seconds=1), Decision.TAKE_OVER),
        ("SENDING", None, Decision.TAKE_OVER),
        ("MAIL_SENT", None, Decision.ALREADY_SENT),
        ("UNDELIVERABLE", None, Decision.UNDELIVERABLE),
        ("DONE", None, Decision.ALREADY_ACTIVE),
        (None, None, Decision.NO_USER),
    ],
)
def test_each_branch_of_the_status_check(
    status: str | None, lease_until: object, decision: Decision
) -> None:
    assert check_status(status, lease_until, NOW) is decision  # type: ignore[arg-type]
    assert sends(decision) is (decision in (Decision.SEND, Decision.TAKE_OVER))


def test_every_status_has_a_branch() -> None:
    assert {check_status(s.value, None, NOW) for s in Status} >= {
        Decision.SEND,
        Decision.TAKE_OVER,
        Decision.ALREADY_SENT,
        Decision.UNDELIVERABLE,
        Decision.ALREADY_ACTIVE,
    }


def test_link_encodes_username_and_token() -> None:
    link = activation_link("https://app.example.com/activate", username="a b&c=d", token="t+/=")
    parts = urlsplit(link)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "app.example.com", "/activate")
    assert parse_qsl(parts.query) == [("username", "a b&c=d"), ("token", "t+/=")]
    assert "a+b%26c%3Dd" in link and "t%2B%2F%3D" in link


def test_a_url_base_that_already_has_a_query_string() -> None:
    link = activation_link(
        "https://app.example.com/activate?lang=de&ref=mail&token=stale",
        username="jane",
        token="abc",
    )
    assert parse_qsl(urlsplit(link).query) == [
        ("lang", "de"),
        ("ref", "mail"),
        ("username", "jane"),
        ("token", "abc"),
    ]


def test_fresh_tokens_have_at_least_256_bits() -> None:
    tokens = {new_token() for _ in range(100)}
    assert len(tokens) == 100
    assert all(len(token) >= 43 for token in tokens)  # 32 bytes, base64url


def test_html_injection_in_the_name_is_escaped() -> None:
    mail = activation_mail(
        to="jane@example.com",
        name='<script>alert("x")</script><a href="https://evil.test">',
        username="jane<b>",
        token="tok",
        url_base="https://app.example.com/activate?x=1",
        product="Acme",
    )
    assert "<script>" not in mail.html and 'href="https://evil.test"' not in mail.html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in mail.html
    assert "jane&lt;b&gt;" in mail.html
    # The link's parameters are encoded, and "&" between them is written &amp; in HTML.
    assert 'href="https://app.example.com/activate?x=1&amp;username=jane%3Cb%3E&amp;token=tok"' in (
        mail.html
    )
    assert "<script>" in mail.text  # plain text is not HTML: shown as typed


def test_url_base_setting_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ActivationMailSettings(url_base="https://a.example/activate?lang=de").url_base
    for bad in ("ftp://a.example/x", "https://a.example/x#frag", "https://u:p@a.example/"):
        with pytest.raises(ValueError, match="url_base"):
            ActivationMailSettings(url_base=bad)
    monkeypatch.setenv("LIFECYCLE_ACTIVATION_MAIL__URL_BASE", "not a url")
    with pytest.raises(ConfigError, match="LIFECYCLE_ACTIVATION_MAIL__URL_BASE"):
        get_settings()
    monkeypatch.setenv("LIFECYCLE_ACTIVATION_MAIL__URL_BASE", "https://a.example/activate")
    monkeypatch.setenv("LIFECYCLE_ACTIVATION_MAIL__MAX_AGE", "7")
    with pytest.raises(ConfigError, match="LIFECYCLE_ACTIVATION_MAIL__MAX_AGE"):
        get_settings()
    monkeypatch.setenv("LIFECYCLE_ACTIVATION_MAIL__MAX_AGE", "P2D")
    assert Settings().activation_mail.max_age == timedelta(days=2)
