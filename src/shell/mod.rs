//! The tokio shell (stub).
