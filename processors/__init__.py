"""Coffea processors of fedhex-hep: feature extraction and flow-based generation."""
