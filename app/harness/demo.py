"""``rollout demo``: the whole service on one machine, end to end, with a live view.

Starts the local broker when ``KAFKA_BOOTSTRAP_SERVERS`` is not set, applies ``topics.yaml``,
starts a controller and two workers (real ``rollout`` processes, logs under
``<ROLLOUT_HOME>/demo``), shows predictions flowing, then walks through the rollout scenarios
of ``app.harness.rollout_scenarios.DEMO`` with traffic and late ground truth, and ends with a
summary of what the controller decided and why.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter

from rich.console import Console
from rich.live import Live
from rich.table import Table

from app.adapters import kafka_local
from app.adapters.control_client import current_states
from app.adapters.kafka_clients import assign_at_end, plain_producer, reader
from app.adapters.kafka_security import client_options
from app.adapters.topics import apply_topics, desired_topics
from app.core.events import Prediction, decode
from app.core.topics import Topic
from app.harness.processes import Services
from app.harness.rollout_scenarios import (
    DEMO,
    ScenarioResult,
    abort_candidate,
    reset,
    run_scenario,
)
from app.harness.traffic import make_requests, send
from app.settings import Settings

console = Console()


async def ensure_kafka(settings: Settings) -> None:
    """The local broker when no cluster is configured; then the topics of ``topics.yaml``."""
    if not os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        console.print("[bold]Kafka[/bold]: starting the local broker (the first run fetches it)…")
        config = kafka_local.BrokerConfig.from_settings(settings)
        result = await asyncio.to_thread(kafka_local.start, config)
        console.print(f"  {result.action} on {result.status.bootstrap} in {result.seconds:.1f}s")
    applied = await apply_topics(
        settings.bootstrap_servers,
        desired_topics(settings),
        security=client_options(settings),
    )
    console.print(
        f"[bold]Topics[/bold]: {len(applied.created)} created, {len(applied.present)} present"
    )


async def show_serving(settings: Settings, seconds: float, rate: float) -> int:
    """Send ``seconds`` of traffic and count the committed predictions as they arrive."""
    consumer = reader(settings)
    await consumer.start()
    producer = plain_producer(settings)
    await producer.start()
    run_id = f"serve-{int(time.time())}"
    requests = make_requests(int(seconds * rate), seed=int(time.time()) % 1000, run_id=run_id)
    seen: Counter[str] = Counter()
    try:
        await assign_at_end(consumer, settings.topics.name(Topic.PREDICTIONS))
        requests_topic = settings.topics.name(Topic.REQUESTS)
        sender = asyncio.create_task(send(producer, requests, rate=rate, topic=requests_topic))
        started = time.monotonic()
        last: Prediction | None = None
        with Live(console=console, refresh_per_second=4) as live:
            while time.monotonic() - started < seconds + 20 and sum(seen.values()) < len(requests):
                batch = await consumer.getmany(timeout_ms=250)
                for records in batch.values():
                    for record in records:
                        p = decode(Prediction, record.value)
                        if p.request_id.startswith(run_id):
                            seen[f"v{p.model.version} {p.output.label}"] += 1
                            last = p
                total = sum(seen.values())
                rate_now = total / max(time.monotonic() - started, 1e-3)
                detail = ", ".join(f"{k}: {n}" for k, n in sorted(seen.items()))
                example = (
                    f" — e.g. {last.request_id} card {last.entity_key}: {last.output.label} "
                    f"({(last.output.scores or [0.0])[-1]:.3f}) by v{last.model.version}, "
                    f"epoch {last.epoch}"
                    if last
                    else ""
                )
                live.update(
                    f"predictions committed: {total:,}/{len(requests):,} "
                    f"({rate_now:,.0f}/s) [{detail}]{example}"
                )
        await sender
        return sum(seen.values())
    finally:
        await producer.stop()
        await consumer.stop()


def _line(result: ScenarioResult, weight: str) -> str:
    last = result.decisions[-1] if result.decisions else None
    said = f"; last decision: {last.action} — {last.reason}" if last else ""
    return (
        f"  {result.scenario.name}: {result.requests:,} requests, "
        f"{result.feedback:,} labels, {result.seconds:.0f}s, weight {weight}{said}"
    )


async def run_demo(settings: Settings, rate: float) -> int:
    await ensure_kafka(settings)
    services = Services(settings)
    services.start()
    console.print(
        f"[bold]Services[/bold]: controller and {services.workers} workers "
        f"(logs in {services.logs})"
    )
    if services.dashboard_port:
        console.print(f"  dashboard: http://127.0.0.1:{services.dashboard_port}/")
    try:
        await asyncio.sleep(6)  # let the controller join its group and the workers load models
        services.check()
        await reset(settings)
        console.print("\n[bold]1. Serving[/bold]: production v1 scores generated card traffic")
        served = await show_serving(settings, seconds=5, rate=rate)
        console.print(f"  {served:,} predictions committed, exactly one per request")
        console.print("\n[bold]2. Rollouts[/bold]: the controller decides on evidence")
        results: list[ScenarioResult] = []
        producer = plain_producer(settings)
        await producer.start()
        try:
            for scenario in DEMO:
                with Live(console=console, refresh_per_second=2) as live:

                    def progress(r: ScenarioResult, live: Live = live) -> None:
                        weight = (
                            r.decisions[-1].to.weight if r.decisions and r.decisions[-1].to else 0.0
                        )
                        live.update(_line(r, f"{weight:.0%}"))

                    result = await run_scenario(
                        settings, producer, scenario, rate=rate, progress=progress
                    )
                services.check()
                results.append(result)
                if result.final is None:  # undecided in time: the next scenario starts clean
                    await abort_candidate(settings, "the demo scenario ran out of time")
                final = result.final
                mark = "[green]✓[/green]" if result.ok else "[red]✗[/red]"
                console.print(
                    f"  {mark} {scenario.name}: "
                    f"{final.action if final else 'no decision'} — "
                    f"{final.reason if final else ''}"
                )
        finally:
            await producer.stop()
        _summary(results)
        states = await current_states(settings)
        st = states.get("fraud")
        if st is not None:
            console.print(
                f"\nAt the end: production v{st.production.version}, candidate "
                f"{'v' + st.candidate.version if st.candidate else '-'} ({st.mode}, "
                f"{st.phase}), epoch {st.epoch}."
            )
        # Leave the deployment as a fresh broker has it (production v1, nothing in flight):
        # the test suite, on the same local broker, starts from there.
        await reset(settings)
        console.print("Reset to production v1 with no candidate. Try `rollout status`.")
        return 0 if all(r.ok for r in results) else 1
    finally:
        services.stop()


def _summary(results: list[ScenarioResult]) -> None:
    table = Table(
        "scenario",
        "expected",
        "decided",
        "compared",
        "labelled",
        "requests",
        "time",
        title="What the controller decided",
    )
    for r in results:
        final = r.final
        samples = final.evidence.samples if final else {}
        decided = final.action if final else "-"
        table.add_row(
            r.scenario.name,
            r.scenario.expect,
            f"[green]{decided}[/green]" if r.ok else f"[red]{decided}[/red]",
            str(samples.get("compared", "-")),
            str(samples.get("labelled", "-")),
            f"{r.requests:,}",
            f"{r.seconds:.0f}s",
        )
    console.print(table)
    console.print("Why:")
    for r in results:
        final = r.final
        console.print(f"  {r.scenario.name}: {final.reason if final else 'no decision'}")
