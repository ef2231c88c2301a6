"""The budget ledger as a value: every change returns a new ledger with ``seq`` one higher, and
no change can break ``reserved + spent <= limit`` (the database enforces it again with a CHECK)."""

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

    def snapshot(self) -> LedgerSnapshot:
        return LedgerSnapshot(currency=self.currency, limit=self.limit, reserved=self.reserved, spent=self.spent,
                              seq=self.seq)


@dataclass
class Batch:
    """What one transaction changes, gathered so it is written in a few statements."""

    ledgers: dict[str, Ledger]
    changed: set[str] = field(default_factory=set)
    history: list[tuple] = field(default_factory=list)
    outbox: list[OutboxRecord] = field(default_factory=list)

    def step(self, campaign_id: str, new: Ledger, cause: str, voucher_id: str | None) -> Ledger:
        self.ledgers[campaign_id] = new
        self.changed.add(campaign_id)
        self.history.append((campaign_id, new.seq, new.limit, new.reserved, new.spent, cause, voucher_id))
        return new
