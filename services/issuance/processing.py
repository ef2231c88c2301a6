"""What the issuance service keeps about customers, for the register of processing."""

from shared.processing import Processing

DECLARATIONS = (
    Processing(
        service="issuance",
        activity="personalized vouchers",
        personal_data=("customer id (pseudonymous)", "vouchers issued to the customer (campaign, variant, channel, "
                       "amounts, dates; codes only as keyed hashes)", "issuance decisions and their reasons",
                       "whether the customer consents to personalized offers and to each contact channel",
                       "segment entries waiting for consent to catch up (at most ISSUANCE_CONSENT_HOLD_MAX_S)",
                       "a keyed hash of each erased customer's id (to drop later events for them)"),
        purpose="issue single-use vouchers to consenting customers through a channel they agreed to, within budget",
        lawful_basis="consent (GDPR Art. 6(1)(a)): personalized_offers and the channel's purpose",
        retention="vouchers and decisions while the campaign's accounts must be kept; on erasure the customer id "
                  "is replaced by an irreversible pseudonym, order ids are removed, trigger keys (cart and order "
                  "ids) are hashed under the pseudonym, the redemptions' idempotency answers are deleted, and the "
                  "amounts stay; idempotency answers are kept ISSUANCE_IDEMPOTENCY_RETENTION_DAYS (90)",
        recipients=("the shop's e-mail, SMS and push senders (delivery-requested: customer id, channel, code)",
                    "analytics (voucher events without codes)"),
    ),
    Processing(
        service="issuance",
        activity="checkout abuse limits",
        personal_data=("keyed hashes of the customer id and of the shopper id the shop passes (X-Shopper-Id) with "
                       "the API key, and how many failed checkout attempts or on-site code listings each has left",),
        purpose="stop code guessing and code harvesting without blocking other shoppers",
        lawful_basis="legitimate interests (GDPR Art. 6(1)(f)) and security of processing (Art. 32)",
        retention="a bucket exists only while it is not full again: at most about two minutes after its last use",
        recipients=(),
    ),
)
