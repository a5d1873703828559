"""What can go wrong sending one mail, by what to do about it.

No message here ever names the recipient or a credential.
"""

from __future__ import annotations

from lifecycle.errors import LifecycleError, PermanentError, TransientError


class MailError(LifecycleError):
    """Sending failed; the message never names the recipient."""


class TransientMailError(MailError, TransientError):
    """Worth retrying later: throttling, connection trouble, SMTP 4xx."""


class PermanentMailError(MailError, PermanentError):
    """Retrying won't help, for any recipient: the sender or the account is refused, the server
    lacks a feature we need. Fix the configuration."""


class Undeliverable(PermanentMailError):
    """This recipient, or this message to them, is refused for good (no such user, a hard
    bounce, an address the backend cannot carry): no notice reached them."""


class InvalidAddress(Undeliverable, ValueError):
    """The address cannot be written as a recipient by this backend."""
