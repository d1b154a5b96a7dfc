"""Image analysis that needs no deep-learning framework: handcrafted cell descriptors and the texture model."""
