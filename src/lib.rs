//! `chamberlain`: a multi-user gateway for OpenCode. See README.md and ARCHITECTURE.md.
//!
//! The binary (`src/main.rs`) is a thin shell over this library; the library exists so that
//! the benchmarks in `bench/` can measure pieces (identity, say) without a network.

pub mod admin;
pub mod api;
pub mod cli;
pub mod connections;
pub mod data_dir;
pub mod errors;
pub mod forwarded;
pub mod gateway;
pub mod identity;
pub mod isolation;
pub mod json_body;
pub mod kubernetes;
pub mod limits;
pub mod listeners;
pub mod logging;
pub mod metrics;
pub mod origin;
pub mod pages;
pub mod peer;
pub mod proxy;
pub mod relay;
pub mod repos;
pub mod request;
pub mod server;
pub mod shared;
pub mod site;
pub mod time;
pub mod tokens;
pub mod upstream;
pub mod websocket;
