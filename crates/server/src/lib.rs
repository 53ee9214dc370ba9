//! `rkms-server`: the HTTP face of RKMS.
//!
//! [`config`] reads the TOML file (or builds the embedded development default), [`backends`]
//! opens the store and KMS regions it names, and [`routes::app`] is the HTTP API over a
//! [`rkms_core::KeyService`]: [`auth`] says who calls and what they may do, [`limits`] bounds
//! each request, [`audit`] records every key operation, [`probes`] answers health checks from
//! a background readiness check and [`address_limit`] limits what anyone may call unauthenticated. [`serve`] runs the connections, over
//! [`tls`] when configured; [`telemetry`] names the metrics they record. `main.rs` wires them
//! together with logging and shutdown.

pub mod access;
pub mod address_limit;
pub mod audit;
pub mod auth;
pub mod backends;
pub mod config;
pub mod error;
pub mod grpc;
pub mod legacy;
pub mod limits;
pub mod live;
pub mod probes;
pub mod reload;
pub mod render;
pub mod routes;
pub mod serve;
pub mod telemetry;
pub mod tls;
