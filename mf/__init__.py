"""Biased matrix factorization (the tutorial's MFAdvanced) on MovieLens: data, model, trainer, metrics.

This package knows nothing of Ray; `tune/` drives it.
"""
