"""Operations: Prometheus metrics (`install.install_observability`), structured logs (`logs`),
request ids (`request_id`). Kept empty so `ckpt` can configure logging without importing the
app (and torch)."""
