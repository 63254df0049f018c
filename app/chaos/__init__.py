"""Fault scenarios under load (``rollout chaos`` and ``tests/integration/test_chaos.py``).

``processes`` runs real ``rollout worker`` / ``rollout controller`` processes and a dedicated
broker; ``load`` sends known request ids (and malformed records) and reads the outputs back
with ``read_committed``; ``scenarios`` injects the faults and tallies (``app.core.tally``).
"""
