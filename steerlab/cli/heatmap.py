"""``steerlab heatmap RUN_DIR --vector FILE``: per-token activation cosines with steering vectors (issue 18)."""

from __future__ import annotations
