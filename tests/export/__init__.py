"""Tests of core/export/ and the export step (core/steps/export.py)."""
