"""Pseudonyms and redaction, so that no e-mail address or raw user id leaves in logs or events."""

from __future__ import annotations

import hashlib
import hmac
import re

_EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}")


def pseudonym(user_id: str, key: bytes | None = None) -> str:
    """A stable, non-reversible id for a user: HMAC-SHA256 when a key is set, else SHA-256."""
    data = f"user:{user_id}".encode()
    if key:
        return hmac.new(key, data, hashlib.sha256).hexdigest()
    return hashlib.sha256(data).hexdigest()


def mask_email(address: str) -> str:
    """``jane.doe@example.com`` -> ``j***@e***.com``."""
    local, _, domain = address.rpartition("@")
    if not local:
        return "***"
    host, _, tld = domain.rpartition(".")
    return f"{local[:1]}***@{host[:1]}***.{tld}" if host else f"{local[:1]}***@***"


def redact(text: str) -> str:
    """Mask every e-mail address inside free text such as an exception message."""
    return _EMAIL.sub(lambda m: mask_email(m.group(0)), text)


def describe_error(exc: BaseException, limit: int = 300) -> str:
    """Exception type and redacted message, safe to log or store."""
    message = redact(str(exc))[:limit]
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
