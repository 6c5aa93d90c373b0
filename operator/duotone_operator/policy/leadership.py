"""Which operator replica writes: a coordination Lease, decided purely (time passed in).

Every replica runs; one holds the Lease and reconciles, the others wait. Expiry is judged on the
observer's own clock, from when it first saw the current record (holder and resourceVersion),
never from the renewTime another machine wrote, so clock skew between nodes cannot make two
replicas lead. A leader that cannot renew within `renew_deadline_seconds` stops writing before
its Lease can expire and be taken over.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Action = Literal["create", "renew", "take", "wait"]


@dataclass(frozen=True)
class LeaseTiming:
    """How long a Lease lasts, how often the leader renews, how long it tries before giving up."""

    lease_seconds: float = 15.0
    renew_seconds: float = 5.0
    renew_deadline_seconds: float = 10.0
    retry_seconds: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.renew_seconds < self.renew_deadline_seconds < self.lease_seconds:
            raise ValueError("need 0 < renew < renew deadline < lease duration")

    @classmethod
    def for_lease(cls, lease_seconds: float) -> LeaseTiming:
        """Renew every third of the Lease, give up after two thirds (client-go's proportions)."""
        return cls(
            lease_seconds=lease_seconds,
            renew_seconds=lease_seconds / 3,
            renew_deadline_seconds=lease_seconds * 2 / 3,
            retry_seconds=max(0.5, min(2.0, lease_seconds / 7)),
        )


@dataclass(frozen=True)
class LeaseRecord:
    """What the Lease says: who holds it (empty: released) and its version."""

    holder: str
    version: str
    lease_seconds: float


def lease_action(
    record: LeaseRecord | None, me: str, *, unchanged_since: float, now: float
) -> Action:
    """What replica `me` does with the Lease it just read.

    `unchanged_since`: when this replica first saw `record` as it is now (its own clock).
    e.g. no Lease: create it; mine: renew; released, or unchanged for a whole lease duration
    (its holder died): take it; else wait.
    """
    if record is None:
        return "create"
    if record.holder == me:
        return "renew"
    if not record.holder or now - unchanged_since >= record.lease_seconds:
        return "take"
    return "wait"


def still_leading(last_renewed: float, now: float, timing: LeaseTiming) -> bool:
    """A leader whose last successful renewal is older than the renew deadline must stop."""
    return now - last_renewed < timing.renew_deadline_seconds
