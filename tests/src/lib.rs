//! Integration tests live in tests/main.rs.
