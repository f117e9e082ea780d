"""Small DRF views for the rate-limit tests: method-derived op classes, a view-level
override, a per-action override, an unnamed URL, and a view whose upstream answers 429."""

from __future__ import annotations

import requests
from django.conf import settings
from django.urls import include, path
from rest_framework import routers, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from resilience_crm.provider.facade import protected
from resilience_crm.throttling import TierRateThrottle


class ThingView(APIView):
    throttle_classes = [TierRateThrottle]
    permission_classes: list[type] = []

    def get(self, request: Request, pk: int | None = None) -> Response:
        return Response({"ok": True, "pk": pk})

    def post(self, request: Request, pk: int | None = None) -> Response:
        return Response({"ok": True}, status=201)


class RpcView(ThingView):
    resilience_operation = "rpc"


class LoginView(ThingView):
    resilience_operation = "auth"


class UpstreamView(ThingView):
    """Calls the upstream at ``settings.UPSTREAM_URL`` through ``protected.rpc``."""

    def get(self, request: Request, pk: int | None = None) -> Response:
        def call() -> str:
            reply = requests.get(settings.UPSTREAM_URL, timeout=5)
            reply.raise_for_status()
            return reply.text

        return Response({"upstream": protected.rpc("upstream", call)})


class ReportViewSet(viewsets.ViewSet):
    throttle_classes = [TierRateThrottle]
    permission_classes: list[type] = []
    # Declared so @action(resilience_operation=...) may set it per action.
    resilience_operation: str | None = None

    def list(self, request: Request) -> Response:
        return Response([])

    @action(detail=False, methods=["post"], resilience_operation="rpc")
    def rebuild(self, request: Request) -> Response:
        return Response({"rebuilt": True})


router = routers.SimpleRouter()
router.register("reports", ReportViewSet, basename="report")

urlpatterns = [
    path("things/", ThingView.as_view(), name="thing-list"),
    path("things/<int:pk>/", ThingView.as_view(), name="thing-detail"),
    path("rpc/", RpcView.as_view(), name="rpc"),
    path("login/", LoginView.as_view(), name="login"),
    path("unnamed/", ThingView.as_view()),
    path("upstream/", UpstreamView.as_view(), name="upstream"),
    path("", include(router.urls)),
]


#: API keys and the tier each one buys, for the TIER_RESOLVER test.
API_KEY_TIERS = {"key-enterprise": "enterprise"}


def tier_from_api_key(request: Request) -> str | None:
    return API_KEY_TIERS.get(request.META.get("HTTP_X_API_KEY", ""))
