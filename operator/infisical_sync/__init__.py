"""Infisical Sync Operator."""
