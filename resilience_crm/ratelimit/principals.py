"""Who a request comes from, for rate limiting: a user id, or the client's IP address.

An anonymous client is its IP address. ``X-Forwarded-For`` counts only through
``TRUSTED_PROXIES`` hops: each trusted proxy appends the address it saw, so the client is the
entry that many places from the right (``REMOTE_ADDR`` being the last hop). Anything a client
writes further left is ignored, so a forged header cannot buy a fresh bucket. IPv6 clients
are limited per /64 network, the block one subscriber usually holds. An IPv4 client seen
through IPv6 (``::ffff:203.0.113.5`` from a dual-stack listener or a proxy, or a 6to4
``2002:cb00:7105::/48`` site) is its IPv4 address, never the /64 those addresses share.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from django.db import DatabaseError
from django.http import HttpRequest
from django.utils.module_loading import import_string

from resilience_crm.conf import settings
from resilience_crm.ratelimit import tiers

logger = logging.getLogger("resilience_crm.ratelimit.principals")


@dataclass(frozen=True)
class Principal:
    """Whose budget a request spends. ``key`` names the buckets (``u:42``, ``ip:192.0.2.1``)."""

    key: str
    tier: str
    exempt: bool = False
    #: Per-user rates that replace the tier's: ``{op_class: rate or [rates]}``.
    overrides: dict[str, Any] = field(default_factory=dict)


def client_ip(request: HttpRequest, trusted_proxies: int | None = None) -> str:
    """The client's address as the ``TRUSTED_PROXIES`` proxies in front of us saw it."""
    trusted = settings.TRUSTED_PROXIES if trusted_proxies is None else trusted_proxies
    remote = str(request.META.get("REMOTE_ADDR", "") or "")
    chosen = remote
    if trusted > 0:
        forwarded = [part.strip() for part in
                     str(request.META.get("HTTP_X_FORWARDED_FOR", "")).split(",") if part.strip()]
        chain = [*forwarded, remote]
        chosen = chain[max(0, len(chain) - 1 - trusted)]
    return grouped_address(chosen) or remote or "unknown"


def grouped_address(text: str) -> str | None:
    """The bucket name of an address as the limiter groups addresses (IPv4-mapped IPv6 as
    IPv4, other IPv6 by its /64), or ``None`` when ``text`` is not an address."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        ipv4 = address.ipv4_mapped or address.sixtofour
        if ipv4 is None:
            return str(ipaddress.ip_network(f"{address}/64", strict=False))
        address = ipv4
    return str(address)


class _Options(NamedTuple):
    resolver: Callable[[HttpRequest], str | None] | None
    exempt_staff: bool
    exempt_permission: str | None
    default_tier: str
    anonymous_tier: str


_options: _Options | None = None


def _read_options() -> _Options:
    """The settings :func:`principal` needs, read once (and again after a setting change)."""
    global _options
    if _options is None:
        resolver = settings.TIER_RESOLVER
        _options = _Options(
            resolver=import_string(resolver) if resolver else None,
            exempt_staff=bool(settings.EXEMPT_STAFF),
            exempt_permission=settings.EXEMPT_PERMISSION or None,
            default_tier=settings.DEFAULT_TIER,
            anonymous_tier=settings.ANONYMOUS_TIER,
        )
    return _options


def principal(request: HttpRequest) -> Principal:
    """The :class:`Principal` for ``request`` (after authentication)."""
    options = _options or _read_options()
    chosen = options.resolver(request) if options.resolver else None
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        return of_user(user, chosen)
    return of_address(client_ip(request), chosen)


def of_user(user: Any, tier: str | None = None) -> Principal:
    """The :class:`Principal` of an authenticated ``user``; ``tier`` as ``TIER_RESOLVER``
    chose it, if it did."""
    options = _options or _read_options()
    exempt = (options.exempt_staff and user.is_staff) or bool(
        options.exempt_permission and _has_permission(user, options.exempt_permission))
    assigned, overrides = tiers.assignment(user.pk)
    return Principal(key=f"u:{user.pk}", tier=tier or assigned or options.default_tier,
                     exempt=exempt, overrides=overrides)


def of_address(address: str, tier: str | None = None) -> Principal:
    """The :class:`Principal` of anonymous clients from ``address`` (as grouped)."""
    options = _options or _read_options()
    return Principal(key=f"ip:{address}", tier=tier or options.anonymous_tier)


def forget() -> None:
    """Forget the options read from settings; the next request reads them again."""
    global _options
    _options = None


def _has_permission(user: Any, permission: str | None) -> bool:
    """Whether ``user`` holds ``permission``; not while the database cannot say."""
    if not permission:
        return False
    try:
        return bool(user.has_perm(permission))
    except DatabaseError as err:
        logger.warning("Could not check %s for rate-limit exemption (%s).", permission, err)
        return False
