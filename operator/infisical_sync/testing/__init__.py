"""Test doubles and local infrastructure shared by tests, benchmarks and the demo."""

from infisical_sync.testing.fake_infisical import FakeInfisical, Fault, RateLimits

__all__ = ["FakeInfisical", "Fault", "RateLimits"]
