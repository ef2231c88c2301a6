from tests.integration.issuance.conftest import issuance, issuance_schema  # noqa: F401 - shared fixtures
