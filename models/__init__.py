"""edgeloop: models."""
