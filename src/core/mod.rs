//! The sans-IO gateway core (stub).
