from pydantic import Field, SecretStr, field_validator
from typing import Annotated

from pydantic_settings import NoDecode, SettingsConfigDict

from shared.settings import ServiceSettings


class ConsentSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CONSENT_", extra="ignore")

    service: str = "consent"
    http_port: int = 8001
    privacy_services: Annotated[list[str], NoDecode] = Field(
        default=["consent"],
        description="services that must answer every export and erasure request (comma-separated in the "
        "environment: CONSENT_PRIVACY_SERVICES=consent,segmentation,issuance,analytics)",
    )
    pseudonym_key: SecretStr = Field(
        SecretStr("local-dev-pseudonym-key-change-me"),
        description="HMAC key for the keyed hashes that stand in for erased customers' ids",
    )
    export_retention_days: int = Field(30, ge=1)
    max_future_skew_s: float = Field(300.0, ge=0, le=3600, description="a consent decision dated more than this "
                                     "after its receipt is refused (422 over HTTP, consent-changed.dlq on Kafka)")
    publish_wait_s: float = Field(5.0, ge=0, description="how long a consent call waits for its consent-state to "
                                  "be on Kafka before answering (then a trigger the shop publishes after the answer "
                                  "is decided after the decision; see docs/privacy.md)")

    @field_validator("privacy_services", mode="before")
    @classmethod
    def _split(cls, value):
        if isinstance(value, str):
            return [s.strip() for s in value.split(",") if s.strip()]
        return value

    @field_validator("privacy_services")
    @classmethod
    def _non_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one service must answer privacy requests")
        return list(dict.fromkeys(value))
