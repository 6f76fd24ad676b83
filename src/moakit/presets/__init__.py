"""Shipped stack presets (TOML data, not code)."""
