"""One throttled DRF view whose work runs through a circuit named in the URL: for the Redis
Cluster failover test, where circuits and limits live on the cluster's masters."""

from __future__ import annotations

from django.urls import path
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from resilience_crm.provider.facade import protected
from resilience_crm.throttling import TierRateThrottle


class CircuitView(APIView):
    throttle_classes = [TierRateThrottle]
    permission_classes: list[type] = []

    def get(self, request: Request, name: str) -> Response:
        return Response({"value": protected.rpc(name, lambda: name, circuit=name)})


urlpatterns = [path("c/<str:name>/", CircuitView.as_view(), name="cluster-circuit")]
