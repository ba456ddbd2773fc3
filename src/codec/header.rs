//! Header (stub).
