"""Domain logic between the HTTP layer and persistence."""
