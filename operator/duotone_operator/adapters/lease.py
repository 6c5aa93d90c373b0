"""The operator's coordination Lease through the official client (`policy.leadership` decides).

`LeaderElector.acquire` returns once this replica holds the Lease (a standby waits inside it);
`LeaderElector.hold` renews it until the replica stops or loses it. Writes carry the
resourceVersion they read, so two replicas racing for the Lease cannot both win.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient

from duotone_operator.adapters import telemetry
from duotone_operator.adapters.kubernetes import REQUEST_TIMEOUT_SECONDS
from duotone_operator.policy.leadership import (
    LeaseRecord,
    LeaseTiming,
    lease_action,
    still_leading,
)

log = logging.getLogger("duotone.operator")

LEASE_NAME = "duotone-operator"
"""The Lease in the operator's namespace (the chart grants get/create/update on it only)."""


def _micro_time(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class LeaderElector:
    """One replica's side of the election."""

    api_client: k8s.ApiClient
    namespace: str
    identity: str
    timing: LeaseTiming = field(default_factory=LeaseTiming)
    name: str = LEASE_NAME
    lost: bool = False
    """Set when leadership was lost (not released): the process must exit, not linger."""
    _seen: tuple[str, str] | None = None
    _seen_at: float = 0.0
    _renewed_at: float = 0.0
    _resource: Any = None

    def _leases(self) -> Any:
        if self._resource is None:
            dynamic = DynamicClient(self.api_client)  # type: ignore[no-untyped-call]
            self._resource = dynamic.resources.get(
                api_version="coordination.k8s.io/v1", kind="Lease"
            )
        return self._resource

    def _read(self) -> tuple[LeaseRecord | None, dict[str, Any]]:
        try:
            lease: dict[str, Any] = (
                self._leases()
                .get(
                    name=self.name,
                    namespace=self.namespace,
                    _request_timeout=REQUEST_TIMEOUT_SECONDS,
                )
                .to_dict()
            )
        except ApiException as error:
            if error.status == 404:
                return None, {}
            raise
        spec = lease.get("spec") or {}
        record = LeaseRecord(
            holder=spec.get("holderIdentity") or "",
            version=str(lease["metadata"]["resourceVersion"]),
            lease_seconds=float(spec.get("leaseDurationSeconds") or self.timing.lease_seconds),
        )
        return record, spec

    def _write(self, body: dict[str, Any], *, create: bool) -> None:
        if create:
            self._leases().create(
                body=body, namespace=self.namespace, _request_timeout=REQUEST_TIMEOUT_SECONDS
            )
        else:
            self._leases().replace(
                body=body, namespace=self.namespace, _request_timeout=REQUEST_TIMEOUT_SECONDS
            )

    def _body(self, wall: float, *, version: str | None, transitions: int) -> dict[str, Any]:
        metadata: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if version is not None:
            metadata["resourceVersion"] = version
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": metadata,
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": round(self.timing.lease_seconds),
                "acquireTime": _micro_time(wall),
                "renewTime": _micro_time(wall),
                "leaseTransitions": transitions,
            },
        }

    def try_once(self, now: float) -> bool:
        """Read the Lease, act on it; True when this replica holds it afterwards. `now` is the
        monotonic clock (expiry); the record's times are wall-clock, for people to read."""
        wall = time.time()
        record, spec = self._read()
        key = (record.holder, record.version) if record else None
        if key != self._seen:
            self._seen, self._seen_at = key, now
        action = lease_action(record, self.identity, unchanged_since=self._seen_at, now=now)
        if action == "wait":
            return False
        try:
            if action == "create" or record is None:
                self._write(self._body(wall, version=None, transitions=0), create=True)
            else:
                transitions = int(spec.get("leaseTransitions") or 0)
                body = self._body(
                    wall,
                    version=record.version,
                    transitions=transitions + (1 if action == "take" else 0),
                )
                if action == "renew" and spec.get("acquireTime"):
                    body["spec"]["acquireTime"] = spec["acquireTime"]
                self._write(body, create=False)
        except ApiException as error:
            if error.status in (409, 422):  # another replica wrote first (or created it)
                return False
            raise
        if action != "renew":
            log.info("leading as %s (lease %s/%s)", self.identity, self.namespace, self.name)
        self._renewed_at = now
        return True

    async def acquire(self) -> None:
        """Wait as a standby until this replica holds the Lease."""
        telemetry.LEADER.set(0)
        announced = False
        while True:
            try:
                if await asyncio.to_thread(self.try_once, time.monotonic()):
                    telemetry.LEADER.set(1)
                    return
            except (ApiException, OSError) as error:
                log.info("lease not reachable: %s", error)
            if not announced:
                log.info("standing by: %s/%s is held by another replica", self.namespace, self.name)
                announced = True
            await asyncio.sleep(self.timing.retry_seconds)

    async def hold(self, stop: asyncio.Event) -> None:
        """Renew until `stop` is set; on losing the Lease set `lost` and `stop`."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.timing.renew_seconds)
                return
            except TimeoutError:
                pass
            try:
                held = await asyncio.to_thread(self.try_once, time.monotonic())
            except (ApiException, OSError) as error:
                log.warning("lease renewal failed: %s", error)
                held = still_leading(self._renewed_at, time.monotonic(), self.timing)
            else:
                if not held:
                    log.error("lease %s/%s taken by another replica", self.namespace, self.name)
            if not held or not still_leading(self._renewed_at, time.monotonic(), self.timing):
                self.lost = True
                telemetry.LEADER.set(0)
                stop.set()
                return

    def release(self) -> None:
        """Give the Lease up at shutdown so a standby takes over at once."""
        try:
            record, spec = self._read()
            if record is None or record.holder != self.identity:
                return
            body = self._body(time.time(), version=record.version, transitions=0)
            body["spec"]["holderIdentity"] = None
            body["spec"]["leaseTransitions"] = int(spec.get("leaseTransitions") or 0)
            self._write(body, create=False)
            log.info("released lease %s/%s", self.namespace, self.name)
        except (ApiException, OSError) as error:
            log.warning("lease release failed (a standby takes over on expiry): %s", error)
        finally:
            telemetry.LEADER.set(0)
