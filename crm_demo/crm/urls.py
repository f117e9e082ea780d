from django.urls import include, path
from rest_framework.routers import DefaultRouter

from crm_demo.crm import analytics, api, imports
from resilience_crm.transactions import non_atomic

router = DefaultRouter()
router.register("contacts", api.ContactViewSet, basename="contact")
router.register("agents", api.AgentViewSet, basename="agent")
router.register("conversations", api.ConversationViewSet, basename="conversation")
router.register("platforms", api.PlatformViewSet, basename="platform")

urlpatterns = [
    path("auth/token/", api.ObtainToken.as_view(), name="api-token"),
    path("analytics/summary/", analytics.AnalyticsSummary.as_view(), name="analytics-summary"),
    # It calls protected: outside the transaction of ATOMIC_REQUESTS (docs/provider.md).
    path("contacts/import/", non_atomic(imports.ContactImport.as_view()),
         name="contact-import"),
    path("", include(router.urls)),
]
