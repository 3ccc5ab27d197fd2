//! What every way of reaching an instance shares — proxied requests (`proxy/`) and bridged
//! websockets (`websocket/`): the HTTP client of each start of an instance, and which headers
//! cross.

mod clients;
pub mod headers;

pub use clients::{InstanceClient, UpstreamClients};

use std::time::Duration;

use awc::error::{ConnectError, SendRequestError};

use crate::errors::GatewayError;

/// A request to an instance (or a websocket handshake) that got no answer, as the error
/// the client sees. awc reports a connection closed before the answer as a connect error.
pub fn send_error(e: SendRequestError, timeout: Duration) -> GatewayError {
    match e {
        SendRequestError::Connect(ConnectError::Disconnected) => {
            GatewayError::Upstream("OpenCode closed the connection without answering".to_owned())
        }
        SendRequestError::Connect(e) => GatewayError::UpstreamConnect(e.to_string()),
        SendRequestError::Timeout => GatewayError::UpstreamTimeout(timeout),
        other => GatewayError::Upstream(other.to_string()),
    }
}
