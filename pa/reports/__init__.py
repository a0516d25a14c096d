"""The fiscal-year PDF report: data (SQL) → HTML (Jinja2) → PDF (WeasyPrint), consumer only.

Kept free of imports: render worker processes import `pa.reports.render` and should
load WeasyPrint and nothing of pa's database or settings.
"""
