"""Training recipes for the lab's own models, on the procedural world. Each recipe is resumable and seeded."""
