"""Speculative decoding of action tokens: draft trees, acceptance rules, the engine."""
