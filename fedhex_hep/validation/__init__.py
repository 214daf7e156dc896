"""Validation: closure metrics, the grid's own noise, reports, comparisons and plots."""
