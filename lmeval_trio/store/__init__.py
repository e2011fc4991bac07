"""Persistence: the SQLite job store and the ends it could not record yet."""
