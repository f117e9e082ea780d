from typing import Any

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.urls import include, path
from django.views.defaults import page_not_found
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from resilience_crm.problems import problem_response

urlpatterns = [
    path("admin/", admin.site.urls),
    path("resilience/", include("resilience_crm.urls")),
    # The OpenAPI 3 schema and its browsable views (static files served locally).
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/", include("crm_demo.crm.urls")),
]


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """A path no URL matches: under ``/api/`` the same problem answer as every API error
    (only with ``DEBUG`` off, when Django calls ``handler404``); elsewhere Django's page."""
    if request.path.startswith("/api/"):
        return problem_response(404, "NOT_FOUND", "Not Found", "No such path in the API.")
    return page_not_found(request, exception)


handler404: Any = not_found
