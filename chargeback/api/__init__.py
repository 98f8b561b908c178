"""DRF API views of the chargeback app, one module per area (budgets, invoices, …)."""
