"""The job table: enqueue in the caller's transaction, claim with a lease, retry or fail."""
