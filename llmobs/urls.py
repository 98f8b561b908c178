from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from llmobs import health
from web.views import admin_login

admin.site.site_header = "llmobs back office"
admin.site.site_title = "llmobs"
admin.site.index_title = "Tenants, prices, budgets and usage"

urlpatterns = [
    # Before admin.site.urls so it wins: the admin's login with the per-IP failure limit.
    path("admin/login/", admin_login, name="admin-login"),
    path("admin/", admin.site.urls),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="schema"), name="api-redoc"),
    path("", include("telemetry.urls")),
    path("", include("chargeback.urls")),
    path("", include("web.urls")),
]

# JSON for /api/ and /v1/, pages in the layout for everything else.
handler403 = "web.errors.handler403"
handler404 = "web.errors.handler404"
handler500 = "web.errors.handler500"
