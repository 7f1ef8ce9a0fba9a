//! Operating the gateway: Prometheus metrics (`/metrics`).

pub mod metrics;
