//! Test and benchmark support: drive a rustls client and server against each other through
//! in-memory buffers, with no sockets. Not for production use.

use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection};

/// Name the client uses in an in-memory handshake (RA-TLS verifiers ignore it).
pub const IN_MEMORY_SERVER_NAME: &str = "cocoon.invalid";

/// What went wrong in an in-memory handshake, per side.
#[derive(Debug, thiserror::Error)]
#[error("in-memory handshake failed: client: {client:?}; server: {server:?}")]
pub struct HandshakeFailure {
    /// The client's error (its own verification failure, or an alert it received).
    pub client: Option<rustls::Error>,
    /// The server's error.
    pub server: Option<rustls::Error>,
    /// I/O errors moving bytes between the buffers (should not happen).
    pub io: Option<String>,
}

/// Creates a client and a server connection from the configs and runs the handshake to
/// completion in memory. On failure both sides' errors are reported.
pub fn handshake_pair(
    client_config: Arc<ClientConfig>,
    server_config: Arc<ServerConfig>,
) -> Result<(ClientConnection, ServerConnection), Box<HandshakeFailure>> {
    let fail = |io: String| {
        Box::new(HandshakeFailure {
            client: None,
            server: None,
            io: Some(io),
        })
    };
    let name = ServerName::try_from(IN_MEMORY_SERVER_NAME).map_err(|e| fail(e.to_string()))?;
    let mut client = ClientConnection::new(client_config, name).map_err(|e| {
        Box::new(HandshakeFailure {
            client: Some(e),
            server: None,
            io: None,
        })
    })?;
    let mut server = ServerConnection::new(server_config).map_err(|e| {
        Box::new(HandshakeFailure {
            client: None,
            server: Some(e),
            io: None,
        })
    })?;
    drive(&mut client, &mut server)?;
    Ok((client, server))
}

/// Moves bytes between `client` and `server` until both have finished the handshake and
/// nothing more is pending, or one side fails (then the other side is given the alert).
pub fn drive(
    client: &mut ClientConnection,
    server: &mut ServerConnection,
) -> Result<(), Box<HandshakeFailure>> {
    let mut client_err = None;
    let mut server_err = None;
    let mut io_err = None;
    for _ in 0..64 {
        let a = transfer(client, server, &mut server_err, &mut io_err);
        let b = transfer(server, client, &mut client_err, &mut io_err);
        if io_err.is_some() || (a == 0 && b == 0) {
            break;
        }
    }
    let done = !client.is_handshaking() && !server.is_handshaking();
    if client_err.is_none() && server_err.is_none() && io_err.is_none() && done {
        return Ok(());
    }
    if !done && client_err.is_none() && server_err.is_none() && io_err.is_none() {
        io_err = Some("handshake did not complete".into());
    }
    Err(Box::new(HandshakeFailure {
        client: client_err,
        server: server_err,
        io: io_err,
    }))
}

/// Writes everything `from` has pending into `to` and lets `to` process it. Returns the
/// number of bytes moved. A processing error of `to` is stored in `to_err` (the first one).
fn transfer(
    from: &mut dyn Endpoint,
    to: &mut dyn Endpoint,
    to_err: &mut Option<rustls::Error>,
    io_err: &mut Option<String>,
) -> usize {
    let mut buf = Vec::new();
    while from.wants_write() {
        match from.write_tls(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                *io_err = Some(e.to_string());
                return 0;
            }
        }
    }
    if buf.is_empty() || to_err.is_some() {
        return buf.len();
    }
    let mut rd = &buf[..];
    while !rd.is_empty() {
        if let Err(e) = to.read_tls(&mut rd) {
            *io_err = Some(e.to_string());
            break;
        }
        if let Err(e) = to.process_new_packets() {
            *to_err = Some(e);
            break;
        }
    }
    buf.len()
}

/// The operations [`transfer`] needs, for both connection types.
trait Endpoint {
    fn wants_write(&self) -> bool;
    fn write_tls(&mut self, w: &mut dyn std::io::Write) -> std::io::Result<usize>;
    fn read_tls(&mut self, r: &mut dyn std::io::Read) -> std::io::Result<usize>;
    fn process_new_packets(&mut self) -> Result<(), rustls::Error>;
}

macro_rules! endpoint {
    ($t:ty) => {
        impl Endpoint for $t {
            fn wants_write(&self) -> bool {
                (**self).wants_write()
            }
            fn write_tls(&mut self, w: &mut dyn std::io::Write) -> std::io::Result<usize> {
                (**self).write_tls(w)
            }
            fn read_tls(&mut self, r: &mut dyn std::io::Read) -> std::io::Result<usize> {
                (**self).read_tls(r)
            }
            fn process_new_packets(&mut self) -> Result<(), rustls::Error> {
                (**self).process_new_packets().map(|_| ())
            }
        }
    };
}
endpoint!(ClientConnection);
endpoint!(ServerConnection);
