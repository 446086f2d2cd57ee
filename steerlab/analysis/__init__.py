"""Analyses that read a finished run and re-run its model: per-token heatmaps (:mod:`.heatmap`,
drawn by :mod:`.heatmap_draw`)."""

from __future__ import annotations
