"""Helpers shared by the test layers (no Salt imports)."""
