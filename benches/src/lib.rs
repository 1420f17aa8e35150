//! The benchmark suites tessera is measured on, and the baselines it is
//! measured against. `cargo xtask bench …` and the criterion benches in
//! `benches/` both use this crate, so they time exactly the same cases.

pub mod attention;
pub mod matmul;
