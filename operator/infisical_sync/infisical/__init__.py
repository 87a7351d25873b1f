"""Infisical API access: transport, session (auth + calls), typed models and errors."""
