//! End-to-end tests: each starts the real `chamberlain` binary and talks HTTP and SSE to it as
//! a client would, in front of either the fake OpenCode (fault injection) or the real,
//! pinned OpenCode.

mod access;
mod attacks;
mod browser;
mod busy;
mod cli;
mod console;
mod identity;
mod input;
mod isolation;
mod kubernetes;
mod lifecycle;
mod mock_model;
mod proxy;
mod real_opencode;
mod relay;
mod repos;
mod startup;
mod support;
mod tokens;
mod webdriver;
mod websocket;
