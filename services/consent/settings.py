from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from shared import topics
from shared.settings import ServiceSettings


class ConsentSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CONSENT_", extra="ignore")

    service: str = "consent"
    http_port: int = 8001
    privacy_services: Annotated[list[str], NoDecode] = Field(
        default_factory=topics.privacy_answerers,
        description="services that must answer every export and erasure request: by default every service the "
        "topic registry lists as answering (consent, segmentation, issuance, analytics); a subset only in "
        "development (comma-separated: CONSENT_PRIVACY_SERVICES=consent,segmentation)",
    )
    pseudonym_key: SecretStr = Field(
        SecretStr("local-dev-pseudonym-key-change-me"),
        description="HMAC key for the keyed hashes that stand in for erased customers' ids",
    )
    export_retention_days: int = Field(7, ge=1, description="an export never fetched is deleted after this long, "
                                       "with the key its parts on Kafka are sealed for")
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

    def problems(self) -> list[str]:
        """Besides the keys: outside development, every service that holds customer data must be
        waited for, or an export would complete holding only some services' parts."""
        missing = [s for s in topics.privacy_answerers() if s not in self.privacy_services]
        if missing and self.environment != "development":
            return super().problems() + [f"CONSENT_PRIVACY_SERVICES leaves out {', '.join(missing)} (exports and "
                                         "erasures would complete without them)"]
        return super().problems()
