"""Who may reach a local HTTP server: the binding rule and the key check, shared by
``trading-agents serve`` and ``trading-agents dashboard``.

Rule: an address other than loopback needs an API key; the key is compared in constant time
and never printed.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import socket

from trading_agents.errors import ConfigError, UserInputError


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def require_key_off_loopback(host: str, has_key: bool, *, what: str, how: str) -> None:
    """Raise :class:`ConfigError` when ``host`` is not loopback and there is no key.

    ``what`` names the server ("serve"), ``how`` says where a key comes from.
    """
    if not is_loopback(host) and not has_key:
        raise ConfigError(f"refusing to {what} on {host} without an API key; set {how}, or bind to 127.0.0.1")


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket, or one error line when the address cannot be had."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise UserInputError(
            f"cannot listen on {host}:{port}: {exc.strerror}; pass another --port or --host"
        ) from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def authorization_matches(header: bytes | None, key: bytes, *, basic: bool = False) -> bool:
    """Whether an ``Authorization`` header value carries ``key``: ``Bearer KEY``, and with
    ``basic`` also HTTP Basic with KEY as the password (what a browser sends)."""
    if not header:
        return False
    scheme, _, given = header.partition(b" ")
    scheme = scheme.lower()
    if scheme == b"bearer":
        return hmac.compare_digest(given.strip(), key)
    if basic and scheme == b"basic":
        try:
            _, _, password = base64.b64decode(given.strip(), validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(password, key)
    return False
