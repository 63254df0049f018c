"""``rollout bench``: the worker's throughput against ceilings, latency, model swaps and the
controller's pace, all measured on one broker in one run.

``run`` (the phases in order), ``setup`` (what every line stands on), ``latency``, ``swaps``,
``pace``, ``report`` (figures, goals, tables; pure) and ``naive_peer`` (the faust peer);
``batch_cpu`` (CPU per request of one batch, without Kafka) runs on its own.
"""
