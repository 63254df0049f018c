"""The replay gate: before an automatic deploy is let through, the last N requests of
``inference.requests`` are scored by the new version beside the current production (the
data plane's own ``score_batch``, in shadow), and the comparisons judged by
``app.core.promotion.replay_gate``.
"""

from __future__ import annotations

from app.adapters.artifact_cache import ArtifactCache
from app.adapters.model_store import ModelStore
from app.adapters.topic_reader import read_tail
from app.core.analysis import RolloutAnalysis
from app.core.artifacts import ArtifactRejected
from app.core.batch_result import DEFAULT_TOPICS
from app.core.events import Action, Comparison, DeploymentState, Mode, Phase, decode, now_ms
from app.core.promotion import replay_gate
from app.core.requests import RawRecord
from app.core.routes import DeploymentRoute
from app.core.scoring import score_batch
from app.core.state_machine import Outcome, reject
from app.core.topics import Topic
from app.settings import Settings


def needs_replay(outcome: Outcome) -> bool:
    """An accepted deploy in automatic mode whose policy asks for a replay gate."""
    state = outcome.state
    return (
        state is not None
        and outcome.decision.action == Action.DEPLOY.value
        and state.mode is Mode.AUTOMATIC
        and state.policy.replay_gate > 0
    )


async def replay(
    settings: Settings,
    store: ModelStore,
    before: DeploymentState,
    outcome: Outcome,
    cache: ArtifactCache | None = None,
) -> Outcome:
    """Automatic mode with ``replay_gate = N``: the last N requests are scored by the new
    version beside the current production before it is let through. With ``cache``, either
    version the store lacks is fetched (verified against the state's sha256) first."""
    new = outcome.state
    assert new is not None
    decision = outcome.decision
    if cache is not None:
        try:
            for ref in (before.production, new.production):
                await cache.ensure(ref.name, ref.version, ref.sha256)
        except ArtifactRejected as error:
            refused = reject(
                before,
                f"replay gate: artifact refused: {error.reason}",
                now_ms(),
                action=decision.action,
                command_id=decision.command_id,
                decided_by=decision.decided_by,
            )
            return Outcome(None, refused.decision)
    records = await read_tail(
        settings, settings.topics.name(Topic.REQUESTS), new.policy.replay_gate
    )
    production = store.load(before.production)
    candidate = store.load(new.production)
    shadow = before.model_copy(
        update={
            "mode": Mode.SHADOW,
            "phase": Phase.PROGRESSING,
            "candidate": new.production,
            "shadow_sample_rate": 1.0,
            "policy": new.policy,
        }
    )
    raw = [
        RawRecord(r.topic, r.partition, r.offset, r.key, r.value, r.timestamp, r.headers)
        for r in records
    ]
    spec = store.spec(before.deployment)
    regression = spec.regression
    scored = score_batch(
        raw,
        {before.deployment: DeploymentRoute(shadow, production, candidate, regression=regression)},
        max_request_bytes=settings.max_request_bytes,
    )
    g = new.policy.guardrails
    analysis = RolloutAnalysis(
        deployment=before.deployment,
        candidate=new.production.version,
        start_epoch=shadow.epoch,
        alpha=new.policy.alpha,
        margin=new.policy.non_inferiority_margin,
        disagreement_ceiling=g.max_disagreement,
        error_ceiling=max(g.max_candidate_error_rate, 1e-4),
        # A regressor's disagreement is by the tolerance (not label equality).
        kind=spec.signature.kind,
        error_cap=regression.error_cap if regression is not None else None,
    )
    for out in scored.outgoing:
        if out.topic == DEFAULT_TOPICS.comparisons:
            analysis.add_comparison(decode(Comparison, out.value))
    passed, reason, evidence = replay_gate(new, analysis)
    if not passed:
        rejected = reject(
            before,
            reason,
            now_ms(),
            action=decision.action,
            command_id=decision.command_id,
            decided_by=decision.decided_by,
        )
        return Outcome(None, rejected.decision.model_copy(update={"evidence": evidence}))
    return Outcome(
        new,
        decision.model_copy(
            update={"reason": f"{decision.reason}; {reason}", "evidence": evidence}
        ),
    )
