//! `rkms-server`: the HTTP face of RKMS.
//!
//! [`config`] reads the TOML file (or builds the embedded development default), [`backends`]
//! opens the store and KMS regions it names, and [`routes::app`] is the HTTP API over a
//! [`rkms_core::KeyService`]. `main.rs` wires them together with logging and shutdown.

pub mod audit;
pub mod backends;
pub mod config;
pub mod error;
pub mod routes;
