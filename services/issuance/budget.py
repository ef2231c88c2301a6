"""The budget ledger as a value: the model of the SQL functions that move a ledger (migration 008:
``budget_allows`` is the rule, ``budget_move`` and ``budget_apply`` the only writers). A use case
plans its steps on the model — a decision needs to know whether an amount fits — and the database
applies them with the rule; ``tests/integration/issuance/test_budget_rule.py`` drives random
sequences through both and holds them to the same balances."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from shared.events import LedgerSnapshot
from shared.outbox import OutboxRecord


class BudgetExhausted(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Ledger:
    campaign_id: str
    currency: str
    limit: int
    reserved: int
    spent: int
    seq: int
    vouchers: int  # vouchers ever issued (count limit)

    def __post_init__(self) -> None:
        if self.reserved < 0 or self.spent < 0 or self.reserved + self.spent > self.limit:
            raise ValueError(f"ledger invariant broken for {self.campaign_id}: "
                             f"reserved {self.reserved} + spent {self.spent} > limit {self.limit}")

    @property
    def remaining(self) -> int:
        return self.limit - self.reserved - self.spent

    def fits(self, amount: int) -> bool:
        return 0 <= amount <= self.remaining

    def reserve(self, amount: int) -> Ledger:
        """Issuing: the voucher's maximum possible discount is set aside."""
        if not self.fits(amount):
            raise BudgetExhausted(self.campaign_id)
        return replace(self, reserved=self.reserved + amount, seq=self.seq + 1, vouchers=self.vouchers + 1)

    def release(self, amount: int) -> Ledger:
        """Expiry or revocation: the unspent reservation goes back."""
        return replace(self, reserved=self.reserved - amount, seq=self.seq + 1)

    def spend(self, reserved_amount: int, actual: int) -> Ledger:
        """Redemption: ``actual`` of the voucher's reservation becomes spent, the rest is released."""
        if actual > reserved_amount:
            raise ValueError("a redemption cannot spend more than its voucher reserved")
        return replace(self, reserved=self.reserved - reserved_amount, spent=self.spent + actual, seq=self.seq + 1)

    def unspend(self, amount: int, re_reserve: int) -> Ledger:
        """Rollback: what was spent returns; ``re_reserve`` of it is reserved again (the voucher
        is active again)."""
        return replace(self, spent=self.spent - amount, reserved=self.reserved + re_reserve, seq=self.seq + 1)

    def with_limit(self, limit: int) -> Ledger:
        """A limit change; never below what is already reserved and spent."""
        return replace(self, limit=limit, seq=self.seq + 1)

    def snapshot(self) -> LedgerSnapshot:
        return LedgerSnapshot(currency=self.currency, limit=self.limit, reserved=self.reserved, spent=self.spent,
                              seq=self.seq)


@dataclass(frozen=True, slots=True)
class Step:
    """One ledger change as the database applies it: what moves, why, and the ledger expected after."""

    campaign_id: str
    d_limit: int
    d_reserved: int
    d_spent: int
    d_vouchers: int
    cause: str  # issued, redeemed, rolled_back, expired, revoked, limit_changed, held, released
    voucher_id: str | None
    expected: Ledger


@dataclass
class Batch:
    """What one transaction changes, gathered so it is written in one call of ``budget_apply``."""

    ledgers: dict[str, Ledger]
    changed: set[str] = field(default_factory=set)
    steps: list[Step] = field(default_factory=list)
    outbox: list[OutboxRecord] = field(default_factory=list)

    def step(self, campaign_id: str, new: Ledger, cause: str, voucher_id: str | None) -> Ledger:
        old = self.ledgers[campaign_id]
        self.steps.append(Step(campaign_id, new.limit - old.limit, new.reserved - old.reserved, new.spent - old.spent,
                               new.vouchers - old.vouchers, cause, voucher_id, new))
        self.ledgers[campaign_id] = new
        self.changed.add(campaign_id)
        return new
