"""A transactional producer's requests to its coordinators, overlapped where Kafka allows.

aiokafka 0.14.0 sends a transaction's coordinator requests one at a time, in a fixed order:
AddPartitionsToTxn (the output partitions; their produce requests wait for it), then
AddOffsetsToTxn (the consumer group), then TxnOffsetCommit (the input offsets, to the group
coordinator), then EndTxn. The worker's transaction therefore cost five round trips in a row
(AddPartitionsToTxn → Produce, with AddOffsetsToTxn → TxnOffsetCommit behind it, → EndTxn).

The protocol only orders some of them: a partition must be added before it is written to,
the group before its offsets are committed, and EndTxn comes after every write and offset
commit is answered. Nothing orders adding partitions against adding the group, or writing
against committing offsets. So, when both are pending, :func:`overlap_transaction_requests`
sends AddPartitionsToTxn together with AddOffsetsToTxn (or with TxnOffsetCommit, once the
group is in): a worker that queues its offsets before its outputs (``app.worker.loop``) waits
for {AddPartitionsToTxn ‖ AddOffsetsToTxn} → {Produce ‖ TxnOffsetCommit} → EndTxn, three
round trips in a row instead of five.

This replaces one method of one producer's ``Sender`` (an instance attribute shadows it) and
calls aiokafka's own request coroutines; what aiokafka does with each answer (retries,
fencing, errors) is unchanged. ``tests/unit/test_transaction_requests.py`` fails when an
aiokafka upgrade moves what this relies on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from aiokafka import AIOKafkaProducer

# The request coroutines of aiokafka's ``Sender``, by what they send.
ADD_PARTITIONS, ADD_OFFSETS, COMMIT_OFFSETS = (
    "_do_add_partitions_to_txn",
    "_do_add_offsets_to_txn",
    "_do_txn_offset_commit",
)
Request = tuple[str, tuple[Any, ...]]  # a Sender coroutine's name and its arguments


def overlap_transaction_requests(producer: AIOKafkaProducer) -> None:
    """Make ``producer`` (transactional, not started) send its pending AddPartitionsToTxn
    together with its pending AddOffsetsToTxn or TxnOffsetCommit."""
    sender = producer._sender
    serial = sender._maybe_do_transactional_request

    def overlapped() -> asyncio.Task[Any] | None:
        requests = pending_requests(sender._txn_manager)
        if len(requests) < 2:
            return serial()  # type: ignore[no-any-return]  # aiokafka's own order
        return asyncio.create_task(_together([getattr(sender, m)(*a) for m, a in requests]))

    sender._maybe_do_transactional_request = overlapped


def pending_requests(txn: Any) -> list[Request]:
    """The coordinator requests a transaction (aiokafka's ``TransactionManager``) can send
    now, unordered among themselves: AddPartitionsToTxn for the partitions not yet added,
    and AddOffsetsToTxn for the group or, once the group is added, TxnOffsetCommit for the
    first offsets queued."""
    requests: list[Request] = []
    partitions = txn.partitions_to_add()
    if partitions:
        requests.append((ADD_PARTITIONS, (partitions,)))
    group = txn.consumer_group_to_add()
    if group is not None:
        requests.append((ADD_OFFSETS, (group,)))
    else:
        commit = txn.offsets_to_commit()
        if commit is not None:
            requests.append((COMMIT_OFFSETS, tuple(commit)))
    return requests


async def _together(steps: list[Coroutine[Any, Any, Any]]) -> None:
    """Run the requests at once; each retries on its own terms (aiokafka's handlers sleep
    their backoff and answer False, and the sender asks again for what is still pending). A
    fatal error of any (a fenced producer) is raised to the sender once all have finished,
    as aiokafka raises it."""
    results = await asyncio.gather(*steps, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
