//! `gateway.yaml` (stub, replaced by the config work).
#[derive(Debug, Clone, Default)]
pub struct Config {}
