//! fanout-loadtest as a library: the lean Socket.IO client ([`client`]) that the node's
//! tests can reuse, and the load generator's parts (workloads, accounting, plots).

pub mod auth;
pub mod client;
pub mod compare;
pub mod error;
pub mod plot;
pub mod redis_conn;
pub mod report;
pub mod scenario;
pub mod sys;
pub mod wsclient;
