"""Guidance Lab engine: models, conditions, guidance and one denoising loop."""
