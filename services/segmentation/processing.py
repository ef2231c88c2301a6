"""What the segmentation service keeps about customers, for the register of processing."""

from shared.processing import Processing

DECLARATIONS = (
    Processing(
        service="segmentation",
        activity="minimal customer profiles and segments",
        personal_data=("customer id (pseudonymous)", "birthday month and day (no year)", "preferred channel",
                       "purchase counts per brand and category and spend per currency, in monthly totals",
                       "last abandoned cart (id, value, time)", "last order time",
                       "segment memberships with the facts that explain them",
                       "a keyed hash of each erased customer's id (to drop stale consent copies for them)"),
        purpose="select customers for personalized offers (profiling), only with profiling consent",
        lawful_basis="consent (GDPR Art. 6(1)(a)): profiling",
        retention="monthly totals 13 months; the whole profile is deleted when profiling consent is withdrawn "
                  "or the customer is erased",
        recipients=("issuance (segment-entered: customer id, segment, explanation)",),
    ),
)
