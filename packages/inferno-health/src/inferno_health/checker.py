"""`HealthChecker`: runs providers periodically and on demand, aggregates, and notifies."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Self

import structlog

from inferno_health.protocols import HealthProvider
from inferno_health.types import (
    HealthChange,
    HealthReport,
    HealthSnapshot,
    HealthStatus,
    Probe,
    ProbeFailure,
    ProbeResult,
    ProviderResult,
)

__all__ = ["ChangeListener", "HealthChecker"]

log = structlog.get_logger(__name__)

ChangeListener = Callable[[HealthChange], object]
"""A plain callable told about every `HealthChange`; what it returns is ignored."""

TIMEOUT_REASON = "timeout"


class HealthChecker:
    """Aggregates `HealthProvider`s into startup, liveness and readiness.

    Call ``await check()`` for an on-demand check, or ``start()`` (or ``async with``) to check
    every ``interval`` seconds in the background; ``snapshot`` is the latest aggregate and is
    cheap to read from a health endpoint. Each provider gets ``timeout`` seconds: a hung one is
    unhealthy with reason ``"timeout"`` and a raising one is unhealthy with the exception as
    reason, so a check always returns within about ``timeout`` seconds.

    Listeners passed as ``on_change`` (or added with `add_listener`) are called with a
    `HealthChange` after the check that changed the overall status, a provider's status or a
    probe's outcome, including the first check. A listener that raises is logged and ignored.

    ``set_ready(False, reason="draining")`` closes the manual readiness gate: readiness fails with
    that reason until ``set_ready(True)``, whatever the providers say.
    """

    def __init__(
        self,
        providers: Iterable[HealthProvider] = (),
        *,
        interval: float = 10.0,
        timeout: float = 5.0,
        on_change: Iterable[ChangeListener] = (),
    ) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval}")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        self._providers: dict[str, HealthProvider] = {}
        for provider in providers:
            self.add_provider(provider)
        self.interval = interval
        self.timeout = timeout
        self._listeners: list[ChangeListener] = list(on_change)
        self._results: dict[str, ProviderResult] = {}
        self._started = False
        self._gate_open = True
        self._gate_reason: str | None = None
        self._snapshot = self._aggregate()
        self._inflight: asyncio.Future[HealthSnapshot] | None = None
        self._loop_task: asyncio.Task[None] | None = None

    # -- configuration -------------------------------------------------------------------------

    def add_provider(self, provider: HealthProvider) -> None:
        """Add a provider; its first result comes with the next check."""
        if provider.name in self._providers:
            raise ValueError(f"a health provider named {provider.name!r} is already registered")
        self._providers[provider.name] = provider

    def add_listener(self, listener: ChangeListener) -> None:
        """Call ``listener`` with every future `HealthChange`."""
        self._listeners.append(listener)

    @property
    def providers(self) -> tuple[HealthProvider, ...]:
        """The registered providers, in registration order."""
        return tuple(self._providers.values())

    # -- readiness gate ------------------------------------------------------------------------

    def set_ready(self, ready: bool, reason: str | None = None) -> HealthSnapshot:
        """Open or close the manual readiness gate and return the updated snapshot.

        Closing it (``set_ready(False, "draining")``) makes readiness fail with ``reason`` at once,
        without waiting for a check; listeners hear about it like any other change.
        """
        self._gate_open = ready
        self._gate_reason = None if ready else (reason or "not ready")
        self._publish(self._aggregate())
        return self._snapshot

    # -- checking ------------------------------------------------------------------------------

    @property
    def snapshot(self) -> HealthSnapshot:
        """The latest aggregate (before the first check: not started, nothing measured)."""
        return self._snapshot

    async def check(self) -> HealthSnapshot:
        """Run every provider now (concurrently, each bounded by ``timeout``) and aggregate.

        Callers arriving while a check is in flight share its result instead of starting
        another, so a burst of health requests costs one round of provider calls.
        """
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.ensure_future(self._check_all())
        # shield: one caller giving up must not cancel the check the others are waiting on.
        return await asyncio.shield(self._inflight)

    async def _check_all(self) -> HealthSnapshot:
        providers = list(self._providers.values())
        results = await asyncio.gather(*(self._run_one(p) for p in providers))
        for result in results:
            self._results[result.name] = result
        if not self._started:
            startup_failed = any(
                r.status is HealthStatus.UNHEALTHY and Probe.STARTUP in r.probes for r in results
            )
            self._started = not startup_failed
        self._publish(self._aggregate())
        return self._snapshot

    async def _run_one(self, provider: HealthProvider) -> ProviderResult:
        began = time.perf_counter()
        report = await self._bounded_check(provider)
        return ProviderResult(
            name=provider.name,
            probes=frozenset(provider.probes),
            status=report.status,
            reason=report.reason,
            data=report.data,
            checked_at=report.checked_at,
            duration_s=time.perf_counter() - began,
        )

    async def _bounded_check(self, provider: HealthProvider) -> HealthReport:
        try:
            task = asyncio.ensure_future(provider.check())
        except Exception as exc:  # check() raised before returning an awaitable
            return _report_for_exception(provider.name, exc)
        try:
            # asyncio.wait, not wait_for: wait_for waits for the cancelled call to finish, and a
            # provider that swallows cancellation would hang the whole check.
            done, _ = await asyncio.wait({task}, timeout=self.timeout)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if not done:
            task.cancel()
            task.add_done_callback(_consume_result)
            log.warning("health_provider_timeout", provider=provider.name, timeout_s=self.timeout)
            return HealthReport.unhealthy(TIMEOUT_REASON, {"timeout_s": self.timeout})
        try:
            report: object = task.result()
        except asyncio.CancelledError:
            return HealthReport.unhealthy("cancelled")
        except Exception as exc:
            return _report_for_exception(provider.name, exc)
        if not isinstance(report, HealthReport):
            return HealthReport.unhealthy(
                f"provider returned {type(report).__name__}, expected HealthReport"
            )
        return report

    # -- aggregation ---------------------------------------------------------------------------

    def _aggregate(self) -> HealthSnapshot:
        results = {n: self._results[n] for n in self._providers if n in self._results}
        probes = {p: self._probe(p, results) for p in Probe}
        checked = [r.checked_at for r in results.values()]
        return HealthSnapshot(
            status=HealthStatus.worst(r.status for r in results.values()),
            checked_at=max(checked) if checked else None,
            providers=results,
            probes=probes,
            ready_gate_open=self._gate_open,
            ready_gate_reason=self._gate_reason,
        )

    def _probe(self, probe: Probe, results: dict[str, ProviderResult]) -> ProbeResult:
        failures = [
            ProbeFailure(source=r.name, status=r.status, reason=r.reason)
            for r in results.values()
            if probe in r.probes and r.status is HealthStatus.UNHEALTHY
        ]
        if probe is Probe.STARTUP:
            if self._started:
                return ProbeResult(probe=probe, ok=True)
            if not failures:
                reason = "no check has completed yet"
                failures = [ProbeFailure(source="startup", status=_UNHEALTHY, reason=reason)]
        if probe is Probe.READINESS:
            if not self._started:
                reason = "startup has not completed"
                failures.insert(0, ProbeFailure(source="startup", status=_UNHEALTHY, reason=reason))
            if not self._gate_open:
                gate = ProbeFailure(source="gate", status=_UNHEALTHY, reason=self._gate_reason)
                failures.insert(0, gate)
        return ProbeResult(probe=probe, ok=not failures, failures=tuple(failures))

    def _publish(self, current: HealthSnapshot) -> None:
        previous, self._snapshot = self._snapshot, current
        first = previous.checked_at is None and current.checked_at is not None
        changed_providers = tuple(
            name
            for name, result in current.providers.items()
            if name not in previous.providers or previous.providers[name].status != result.status
        )
        changed_probes = tuple(p for p in Probe if previous.probes[p].ok != current.probes[p].ok)
        status_changed = previous.status is not current.status
        if not (first or changed_providers or changed_probes or status_changed):
            return
        change = HealthChange(
            previous=None if first else previous,
            current=current,
            changed_providers=changed_providers,
            changed_probes=changed_probes,
        )
        log.info(
            "health_changed",
            status=current.status.value,
            providers=list(changed_providers),
            probes=[p.value for p in changed_probes],
        )
        for listener in list(self._listeners):
            try:
                listener(change)
            except Exception:
                # A broken subscriber must not break health reporting or the other listeners.
                log.exception("health_listener_failed", listener=repr(listener))

    # -- periodic loop -------------------------------------------------------------------------

    def start(self) -> None:
        """Check now and then every ``interval`` seconds, in a background task."""
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(
                self._run_periodically(), name="inferno-health-checker"
            )

    async def stop(self) -> None:
        """Stop the background checks (an in-flight check is cancelled)."""
        tasks = [t for t in (self._loop_task, self._inflight) if t is not None]
        self._loop_task = self._inflight = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except asyncio.CancelledError:
                # Swallow the cancellation we caused, but not one aimed at the caller itself.
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise

    async def _run_periodically(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:  # _check_all turns provider errors into reports; this is a bug
                log.exception("health_check_failed")
            await asyncio.sleep(self.interval)

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


_UNHEALTHY = HealthStatus.UNHEALTHY


def _report_for_exception(name: str, exc: Exception) -> HealthReport:
    log.warning("health_provider_raised", provider=name, error=repr(exc))
    message = str(exc)
    reason = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return HealthReport.unhealthy(reason, {"exception": type(exc).__name__})


def _consume_result(task: asyncio.Future[HealthReport]) -> None:
    # A timed-out check may still fail later; fetch its exception so asyncio does not log
    # "exception was never retrieved" for a result nobody waits for any more.
    if not task.cancelled():
        task.exception()
