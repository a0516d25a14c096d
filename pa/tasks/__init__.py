"""One module per job type; each registers its handler (pa.handlers) on import."""

from __future__ import annotations

import importlib

TASK_MODULES = ("email_notification", "report", "analytics", "bulk_import", "archive", "backup")
for _name in TASK_MODULES:
    importlib.import_module(f"pa.tasks.{_name}")
