"""Persistence: typed models, engine/session setup, repositories (queries only, never commit)."""
