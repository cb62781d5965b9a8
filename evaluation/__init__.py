"""Evaluation: dataset adapters, zero-shot classification, results in the catalog."""
