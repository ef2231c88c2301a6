from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class IssuanceSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="ISSUANCE_", extra="ignore")

    service: str = "issuance"
    http_port: int = 8003
    code_hash_key: SecretStr = Field(SecretStr("local-dev-code-hash-key-change-me"),
                                     description="HMAC key: codes are stored only as HMACs under it")
    code_hash_previous_keys: list[SecretStr] = Field(
        default_factory=list, description="earlier code-hash keys (a JSON list), newest first: codes issued under them "
        "still validate; keep each until every code issued under it has expired (`voucherstream keys rotate`)")
    code_seal_key: SecretStr = Field(SecretStr("local-dev-code-seal-key-change-me"),
                                     description="seals on-site codes (AES-GCM) so the on-site API can show them")
    code_seal_previous_keys: list[SecretStr] = Field(
        default_factory=list, description="earlier seal keys (a JSON list), newest first: on-site codes and queued "
        "delivery requests sealed under them still open; keep each until the longest validity after the rotation")
    pseudonym_key: SecretStr = Field(SecretStr("local-dev-pseudonym-key-change-me"),
                                     description="HMAC key of the pseudonyms that replace erased customers' ids")
    consent_hold_max_s: float = Field(30.0, gt=0, description="how long a segment entry waits for consent to apply "
                                      "every decision published before it; then it is refused (consent_unconfirmed)")
    consent_hold_check_s: float = Field(0.25, gt=0, description="how often held entries are looked at outside "
                                        "the consumer (marks moved by another instance, waits that ran out)")
    expiry_interval_s: float = Field(10.0, gt=0, description="how often vouchers past validity are expired")
    expiry_batch: int = Field(1000, ge=1)
    idempotency_retention_days: float = Field(90.0, gt=0, description="how long a redemption's Idempotency-Key "
                                              "answer is kept: replays are answered, and the redemption may be "
                                              "rolled back (only with the key that made it), for this long")
    failed_attempts_per_minute: float = Field(30.0, gt=0, description="failed validations/redemptions refilled per "
                                              "minute, per API key and customer, and per API key and shopper "
                                              "(X-Shopper-Id)")
    failed_attempts_burst: int = Field(30, ge=1)
    onsite_listings_per_minute: float = Field(60.0, gt=0, description="listings of a customer's offers with their "
                                              "on-site codes, per API key and customer, and per key and shopper")
    onsite_listings_burst: int = Field(60, ge=1)
    redemption_write_connections: int = Field(2, ge=1, description="connections of the redemption writer (batches of "
                                              "different campaigns are written in parallel)")
    checkout_read_connections: int = Field(4, ge=1, description="connections of the checkout's reads and "
                                           "failure-limit tokens (what arrives while one read is in flight goes "
                                           "in the next)")
    redemption_batch_max: int = Field(200, ge=1, description="most checkout reads, or single-use redemptions of one "
                                      "campaign, sent in one statement")
    voucherify_currency: str = Field("USD", pattern=r"^[A-Z]{3}$", description="the currency of amounts on the "
                                     "Voucherify-compatible routes (/voucherify/v1/...), whose orders carry none")
    voucherify_session_ttl_s: float = Field(7 * 86400.0, gt=0, description="how long a LOCK session holds its "
                                            "voucher when the request names no ttl (Voucherify's default: 7 days)")
