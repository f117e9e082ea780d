"""Token authentication through the provider (kept apart from views: DRF imports it while
it builds ``APIView``): a token's user is cached, so authenticated
clients keep reading while the database is down; a revoked token stops working within
``FALLBACK_TTL`` (at once when it is deleted through the ORM)."""

import hashlib
from typing import Any

from django.contrib.auth import get_user_model
from django.db.models.signals import post_delete
from django.dispatch import receiver
from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token
from rest_framework.exceptions import AuthenticationFailed

from resilience_crm.provider import protected

#: Key space of cached token checks.
SPACE = "authtokens"
USER_FIELDS = ("username", "is_active", "is_staff", "is_superuser")


def cache_key(token: str) -> str:
    return f"{SPACE}:{hashlib.sha256(token.encode()).hexdigest()}"


def _token_user(token: str) -> dict[str, Any]:
    found = Token.objects.select_related("user").filter(key=token).first()
    if found is None or not found.user.is_active:
        raise AuthenticationFailed("Invalid token.")
    user = found.user
    return {"pk": user.pk, **{field: getattr(user, field) for field in USER_FIELDS}}


class ProtectedTokenAuthentication(TokenAuthentication):
    def authenticate_credentials(self, key: str) -> tuple[Any, str]:
        info = protected.read(cache_key(key), lambda: _token_user(key), circuit="crm.auth")
        return get_user_model()(**info), key


@receiver(post_delete, sender=Token, dispatch_uid="crm_demo.revoke_token")
def revoke_token(sender: Any, instance: Token, **kwargs: Any) -> None:
    protected.invalidate(cache_key(instance.key))
