"""Dagster orchestration of the dd3g recipe: thin wrappers over :mod:`dd3g_core`."""
