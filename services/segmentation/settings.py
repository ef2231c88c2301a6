from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class SegmentationSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="SEGMENTATION_", extra="ignore")

    service: str = "segmentation"
    http_port: int = 8002
    rules_file: Path = Field(Path(__file__).parent / "rules.yaml", description="the versioned segment rules")
    rules_check_interval_s: float = Field(5.0, gt=0, description="how often the rules file is checked for changes")
    daily_tick_interval_s: float = Field(86400.0, gt=0, description="how often birthdays are evaluated for everyone")
    pseudonym_key: SecretStr = Field(SecretStr("local-dev-pseudonym-key-change-me"),
                                     description="HMAC key of the keyed hashes that stand in for erased customers")
