"""Profiling: safe decoding and the metric functions (docs/profiles.md)."""
