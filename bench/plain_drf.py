"""The peer of the demo API's endpoints: the same contacts as plain DRF, as a URLconf beside
the demo's (``ROOT_URLCONF = "plain_drf"``, imported once Django is set up).

``/plain/contacts/`` is a ``ModelViewSet`` over the demo's model and serializer, with DRF's
stock ``TokenAuthentication`` (one query per request), no throttle, and the demo's
pagination; :func:`clients` gives a test client for it whose handler runs the demo's
middleware minus ours. ``/api/contacts/`` is the demo's, with all its protection on.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client, override_settings
from django.urls import include, path
from rest_framework import routers, viewsets
from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token
from rest_framework.permissions import IsAuthenticated

import crm_demo.urls
from crm_demo.crm.models import Contact
from crm_demo.crm.serializers import ContactSerializer

OURS, PLAIN = "resilience_crm", "plain DRF"
#: Each side's contacts endpoint.
URLS = {OURS: "/api/contacts/", PLAIN: "/plain/contacts/"}


class PlainContacts(viewsets.ModelViewSet):
    queryset = Contact.objects.all()
    serializer_class = ContactSerializer
    authentication_classes = [TokenAuthentication]
    permission_classes = [IsAuthenticated]
    throttle_classes: list = []


router = routers.SimpleRouter()
router.register("contacts", PlainContacts, basename="plain-contacts")
urlpatterns = [path("plain/", include(router.urls)), path("", include("crm_demo.urls"))]
handler404 = crm_demo.urls.handler404


def clients(username: str = "bench") -> dict[str, Client]:
    """A test client per side with ``username``'s token; the plain side's handler is built
    without the resilience middleware (by a first request, checked to succeed)."""
    user, _ = User.objects.get_or_create(username=username)
    token, _ = Token.objects.get_or_create(user=user)
    ours = Client(HTTP_AUTHORIZATION=f"Token {token.key}")
    plain = Client(HTTP_AUTHORIZATION=f"Token {token.key}")
    middleware = [m for m in settings.MIDDLEWARE if not m.startswith("resilience_crm.")]
    with override_settings(MIDDLEWARE=middleware):
        assert plain.get(URLS[PLAIN]).status_code == 200
    assert ours.get(URLS[OURS]).status_code == 200
    return {OURS: ours, PLAIN: plain}
