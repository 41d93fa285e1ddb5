//! One file per control request after the handshake (in the style of one file per command):
//! each adds its handler to `Router`, and `Router::handle` dispatches to it.

mod audit;
mod grants;
mod leave;
mod members;
mod membership;
mod peers;
mod profile;
mod resolve;
mod status;
mod workspace;

pub use audit::audit_record;
