"""Token authentication through the provider (kept apart from views: DRF imports it while
it builds ``APIView``): a token's user is cached, so authenticated clients keep reading
while the database is down. Deleting a token, or saving or deleting its user, through the
ORM revokes the cached check (``protected.revoke``): refused at once in this process and
within ``LOCAL_TTL`` (1 s) in every other, also while the database or ``crm.auth`` is down.
A token revoked behind the ORM's back stops working within ``FALLBACK_TTL``, when the next
check of it says "invalid"."""

import hashlib
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token
from rest_framework.exceptions import AuthenticationFailed

from resilience_crm.provider.facade import protected

#: Key space of cached token checks.
SPACE = "authtokens"
USER_FIELDS = ("username", "is_active", "is_staff", "is_superuser")


def cache_key(token: str) -> str:
    return f"{SPACE}:{hashlib.sha256(token.encode()).hexdigest()}"


def _token_user(token: str) -> dict[str, Any]:
    found = Token.objects.select_related("user").filter(key=token).first()
    if found is None or not found.user.is_active:
        raise AuthenticationFailed("Invalid token.")  # a negative answer: no stale stand-in
    user = found.user
    return {"pk": user.pk, **{field: getattr(user, field) for field in USER_FIELDS}}


class ProtectedTokenAuthentication(TokenAuthentication):
    def authenticate_credentials(self, key: str) -> tuple[Any, str]:
        info = protected.read(cache_key(key), lambda: _token_user(key), circuit="crm.auth")
        return get_user_model()(**info), key


@receiver(post_delete, sender=Token, dispatch_uid="crm_demo.revoke_token")
def revoke_token(sender: Any, instance: Token, **kwargs: Any) -> None:
    protected.revoke(cache_key(instance.key))


@receiver(post_save, sender=settings.AUTH_USER_MODEL, dispatch_uid="crm_demo.revoke_user")
def revoke_user_tokens(sender: Any, instance: Any, created: bool,
                       update_fields: frozenset[str] | None = None, **kwargs: Any) -> None:
    """A user's cached checks carry ``is_active`` and the staff flags: a save may change
    them (deactivation above all), so the user's tokens are checked afresh."""
    if not created and update_fields != {"last_login"}:
        for key in Token.objects.filter(user=instance).values_list("key", flat=True):
            protected.revoke(cache_key(key))
