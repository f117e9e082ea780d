"""Database backends with the query guard, one per Django backend it extends."""
