"""What the analytics service keeps about customers, for the register of processing: nothing
that names one — counters per campaign, variant and channel, and voucher and redemption ids."""

from shared.processing import Processing

DECLARATIONS = (
    Processing(
        service="analytics",
        activity="campaign counters",
        personal_data=(),
        purpose="budget control and A/B results per campaign, variant and channel",
        lawful_basis="legitimate interest (GDPR Art. 6(1)(f)) in aggregate, non-personal statistics",
        retention="for the campaign's life; no customer id is stored",
        recipients=("marketers (Grafana, budget-counters)",),
    ),
)
