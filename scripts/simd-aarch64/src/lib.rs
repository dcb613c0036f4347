//! The kernels of `src/detect/simd.rs`, compiled on their own (see
//! Cargo.toml): `cargo test` here runs that file's unit tests.

#[path = "../../../src/detect/simd.rs"]
pub mod simd;
