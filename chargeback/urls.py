"""URLs of the chargeback app. Each area adds its own block."""

from django.urls import path

from chargeback.api import invoices

urlpatterns: list = []

# Invoicing (docs/INVOICING.md)
urlpatterns += [
    path("api/v1/invoices", invoices.InvoiceListView.as_view(), name="invoice-list"),
    path("api/v1/invoices/<int:pk>", invoices.InvoiceDetailView.as_view(), name="invoice-detail"),
    path("api/v1/invoices/<int:pk>/csv", invoices.InvoiceCsvView.as_view(), name="invoice-csv"),
    path("api/v1/invoices/<int:pk>/pdf", invoices.InvoicePdfView.as_view(), name="invoice-pdf"),
    path("api/v1/invoices/<int:pk>/issue", invoices.IssueView.as_view(), name="invoice-issue"),
    path("api/v1/invoices/<int:pk>/approve", invoices.ApproveView.as_view(), name="invoice-approve"),
    path("api/v1/invoices/<int:pk>/dispute", invoices.DisputeView.as_view(), name="invoice-dispute"),
    path("api/v1/invoices/<int:pk>/resolve", invoices.ResolveView.as_view(), name="invoice-resolve"),
    path("api/v1/exports/focus", invoices.FocusExportView.as_view(), name="export-focus"),
    path("api/v1/exports/gl", invoices.GlExportView.as_view(), name="export-gl"),
]
