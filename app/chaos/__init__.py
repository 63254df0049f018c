"""Fault scenarios under load (``rollout chaos`` and ``tests/integration/test_chaos.py``).

``fault_scenarios`` injects the faults into real ``rollout worker`` / ``rollout controller``
processes (``app.harness.processes``) and a broker of its own (``own_broker``); ``load``
sends known request ids (and malformed records) and reads the outputs back with
``read_committed``; ``tally`` counts them per request.
"""
