"""Page URLs (namespace `web`). The names are the ones web.navigation.NAVIGATION lists; a page
joins the menu by resolving."""

from django.urls import path

from web import (
    views,
    views_alerts,
    views_anomalies,
    views_chat,
    views_invoices,
    views_quality,
    views_reports,
    views_stakeholder,
)

app_name = "web"

urlpatterns = [
    path("", views.home, name="home"),
    path("login/", views.LoginView.as_view(), name="login"),
    path("logout/", views.LogoutView.as_view(), name="logout"),
    path("tenant/", views.switch_tenant, name="switch-tenant"),
    path("me/usage/", views.my_usage, name="my-usage"),
    path("budgets/", views.budgets, name="budgets"),
    path("budgets/<int:pk>/", views.budget_detail, name="budget-detail"),
    path("chat/", views_chat.chat, name="chat"),
    path("overview/", views_reports.overview, name="overview"),
    path("departments/", views_reports.departments, name="departments"),
    path("my-department/", views_reports.my_department, name="my-department"),
    path("departments/<slug:code>/", views_reports.department_detail, name="department-detail"),
    path("invoices/", views_invoices.invoice_list, name="invoices"),
    path("invoices/exports/focus/", views_invoices.export_focus, name="export-focus"),
    path("invoices/exports/gl/", views_invoices.export_gl, name="export-gl"),
    path("invoices/<int:pk>/", views_invoices.invoice_detail, name="invoice-detail"),
    path("invoices/<int:pk>/issue/", views_invoices.invoice_issue, name="invoice-issue"),
    path("invoices/<int:pk>/approve/", views_invoices.invoice_approve, name="invoice-approve"),
    path("invoices/<int:pk>/dispute/", views_invoices.invoice_dispute, name="invoice-dispute"),
    path("invoices/<int:pk>/resolve/", views_invoices.invoice_resolve, name="invoice-resolve"),
    path("invoices/<int:pk>/csv/", views_invoices.invoice_csv, name="invoice-csv"),
    path("invoices/<int:pk>/pdf/", views_invoices.invoice_pdf, name="invoice-pdf"),
    path("anomalies/", views_anomalies.anomaly_list, name="anomalies"),
    path("anomalies/<int:pk>/ack/", views_anomalies.anomaly_ack, name="anomaly-ack"),
    path("anomalies/<int:pk>/resolve/", views_anomalies.anomaly_resolve, name="anomaly-resolve"),
    path("quality/", views_quality.quality, name="quality"),
    path("alerts/", views_alerts.alert_list, name="alerts"),
    *views_stakeholder.urlpatterns,
]
