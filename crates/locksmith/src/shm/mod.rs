//! Shared-memory primitives (issue 3).
