"""Measures of the lab's models with the world's evaluator: `python -m evaluation.evaluate text|class|control`."""
