"""The ``llm_ucb`` Hydra sweeper: an exploration tree with UCB selection and a pluggable proposer."""
