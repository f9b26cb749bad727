//! Ending a long-polling Engine.IO session from the server side.
//!
//! A session that must end (its token was revoked or expired) is told with a Socket.IO
//! DISCONNECT. A client that stopped polling has a full buffer, so that packet cannot be
//! queued; socketioxide 0.18 has no public call that closes a socket's Engine.IO session
//! then, and a long-polling session has no TCP connection of its own to close. Left alone it
//! would live until its next heartbeat fails (up to `FANOUT_PING_INTERVAL_MS` +
//! `FANOUT_PING_TIMEOUT_MS`). [`PollingCloser`] does what the client itself would do to
//! leave: it posts an Engine.IO close packet (`1`) for that session to the node's own
//! Engine.IO service — in process, no network — which ends the session at once.

use axum::Router;
use axum::body::Body;
use axum::http::{Request, header};
use socketioxide::service::SocketIoService;
use tower::ServiceExt;

use crate::io::{NodeAdapter, NodeSocket};

/// The node's Socket.IO service, as it serves requests: a clone shares its Engine.IO
/// sessions (each application of the Socket.IO *layer* would start an engine of its own, so
/// the node builds the service once and keeps a clone here).
pub type NodeService = SocketIoService<Router, NodeAdapter>;

/// Closes long-polling sessions through the node's own Socket.IO service (cheap to clone).
#[derive(Clone)]
pub struct PollingCloser(NodeService);

impl PollingCloser {
    /// A closer over the node's Socket.IO service.
    pub fn new(service: NodeService) -> Self {
        Self(service)
    }

    /// Ends the Engine.IO session of `socket` (a long-polling one) as if its client had
    /// sent a close packet; runs in the background.
    pub fn close(&self, socket: &NodeSocket) {
        let sid = socket.id;
        let request = Request::post(format!("/socket.io/?EIO=4&transport=polling&sid={sid}"))
            .header(header::CONTENT_TYPE, "text/plain;charset=UTF-8")
            .body(Body::from("1"));
        let Ok(request) = request else {
            return;
        };
        let service = self.0.clone();
        tokio::spawn(async move {
            if let Ok(response) = service.oneshot(request).await
                && !response.status().is_success()
            {
                tracing::debug!(%sid, status = %response.status(), "polling session close refused (gone already?)");
            }
        });
    }
}
