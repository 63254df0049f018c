"""What drives a running Rollout system from outside: generated traffic and ground truth
(``traffic``), rollouts driven until the controller decides (``rollout_scenarios``), the demo
(``demo``), and the one wrapper for the ``rollout`` processes they start (``processes``).
"""
