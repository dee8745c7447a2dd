"""`ckpt demo`: train a small GPT-2 on a generated corpus and walk it through the registry."""
