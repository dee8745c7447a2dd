"""Untrusted bytes -> validated artifact. Nothing in here trusts the upload."""
