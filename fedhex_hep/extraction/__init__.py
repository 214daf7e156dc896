"""Extraction: safe expressions, coffea executors and the extraction runner."""
