"""The spherical mapper: model, losses, training and its points on the sphere."""
