"""The HTTP edge: a Quart-Trio app whose routes stay thin and call the supervisor."""
