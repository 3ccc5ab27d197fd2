//! What every way of reaching an instance shares — proxied requests (`proxy/`) and bridged
//! websockets (`websocket/`): the HTTP client of each start of an instance, and which headers
//! cross.

mod clients;
pub mod headers;

pub use clients::{InstanceClient, UpstreamClients};
