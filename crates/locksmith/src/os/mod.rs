//! The operating-system layer every store shares, whatever store features are on.

pub(crate) mod liveness;
