from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("resilience/", include("resilience_crm.urls")),
    path("api/", include("crm_demo.crm.urls")),
]
