//! The Socket.IO server types of a node. One concrete adapter type serves both modes
//! (`FanoutAdapterCtr::local()` embedded, `FanoutAdapterCtr::redis(…)` in a cluster), so
//! handlers are not generic.

/// The socketioxide adapter of every namespace.
pub type NodeAdapter = fanout_adapter::FanoutAdapter<socketioxide::adapter::Emitter>;

/// The Socket.IO server handle.
pub type Io = socketioxide::SocketIo<NodeAdapter>;

/// A Socket.IO socket of this node.
pub type NodeSocket = socketioxide::extract::SocketRef<NodeAdapter>;
