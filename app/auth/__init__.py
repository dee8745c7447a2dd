"""API keys: scopes, the bearer check, per-key rate limits and storage quotas.

Only an HMAC of each key is stored (keyed with a server-side pepper); see app.auth.keys.
"""
