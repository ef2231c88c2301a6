"""The analytics service's settings (environment variables prefixed ``ANALYTICS_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class AnalyticsSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="ANALYTICS_", extra="ignore")

    service: str = "analytics"
    http_port: int = 8004
    publish_interval_s: float = Field(1.0, gt=0, description="a campaign's counters are published at most this often")
    check_interval_s: float = Field(0.1, gt=0, description="how often changes are looked for")
