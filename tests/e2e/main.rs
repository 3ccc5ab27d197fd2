//! End-to-end tests: each starts the real `chamberlain` binary and talks HTTP and SSE to it as
//! a client would, in front of either the fake OpenCode (fault injection) or the real,
//! pinned OpenCode.

mod access;
mod attacks;
mod browser;
mod busy;
mod cli;
mod console;
// The processes tests and benchmarks (bench/src/procs.rs) start alike.
#[path = "../common/direct_opencode.rs"]
mod direct_opencode;
#[path = "../common/gateway_process.rs"]
mod gateway_process;
mod identity;
mod input;
mod isolation;
mod kubernetes;
mod lifecycle;
mod mock_model;
#[path = "../common/process_group.rs"]
mod process_group;
mod proxy;
mod real_opencode;
mod relay;
mod repos;
mod startup;
mod support;
mod tokens;
mod webdriver;
mod websocket;
