"""HTTP layer: thin routers and pydantic schemas, one module per resource."""
