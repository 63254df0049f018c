"""Monte Carlo of the controller's decision path (``rollout simulate``): situations, runner,
report. Not part of the product's decisions; it drives them."""
