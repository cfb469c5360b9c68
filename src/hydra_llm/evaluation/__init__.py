"""Metrics and plots. Evaluation is the only code that reads GroundTruth."""
