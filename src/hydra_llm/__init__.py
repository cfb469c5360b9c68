"""hydra-llm: recover hidden network parameters from simulated activity, explored by an LLM-guided
UCB tree."""

__version__ = "0.1.0"
