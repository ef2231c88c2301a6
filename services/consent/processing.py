"""What the consent service keeps about customers, for the register of processing."""

from shared.processing import Processing

DECLARATIONS = (
    Processing(
        service="consent",
        activity="consent ledger",
        personal_data=("customer id (pseudonymous)", "consent decisions per purpose", "policy version seen",
                       "where and when the decision was made"),
        purpose="prove the customer's consent for each processing purpose and derive the current state",
        lawful_basis="legal obligation (GDPR Art. 6(1)(c) with Art. 7(1): the controller must demonstrate consent)",
        retention="while the customer is a customer; erased on request, leaving only a keyed hash of the id",
        recipients=("segmentation and issuance (the derived state, on consent-state)",),
    ),
    Processing(
        service="consent",
        activity="privacy requests",
        personal_data=("keyed hash of the customer id", "request and completion times",
                       "each service's export part until the export is collected"),
        purpose="answer access, portability and erasure requests and prove that they were answered",
        lawful_basis="legal obligation (GDPR Art. 12, 15, 17, 20)",
        retention="export parts, sealed, until the bundle is handed out (once) and at most "
                  "CONSENT_EXPORT_RETENTION_DAYS (7); then they and the request's key are deleted, which leaves the "
                  "parts' copies on Kafka unreadable; erasure proofs for as long as the accountability duty lasts",
        recipients=("the customer (exports)",),
    ),
    Processing(
        service="consent",
        activity="data key store (shared by the four services, schema voucherstream_keys)",
        personal_data=("keyed hash of the customer id", "the customer's data key, wrapped under "
                       "VOUCHERSTREAM_DATA_KEY", "when it was created"),
        purpose="seal the personal fields of the customer's events on Kafka, so that an erasure reaches every copy "
                "of them (crypto-shredding)",
        lawful_basis="legal obligation (GDPR Art. 17 and 32: erasure, security of processing)",
        retention="until the customer's erasure, which deletes the key first",
        recipients=("the four services and the shop's producers and senders with access to the key store",),
    ),
)
