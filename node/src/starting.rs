//! What a node answers while it is still starting. Its first connection to Redis waits (with
//! backoff) for a Redis or a Redis Cluster that may not be there yet; meanwhile the listener is
//! already bound, and instead of leaving requests hanging in the backlog the node answers every
//! request, `/healthz` and `/readyz` included, 503 `{"status":"starting"}` — one request per
//! connection. `/healthz` is 503 too: "healthy" means serving (Docker's HEALTHCHECK, test
//! harnesses and balancers take it so), and a starting node serves nothing yet.

use std::future::Future;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

/// Longest a starting-time connection may take to send its request and get the answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs `starting` (the node's build) to completion, answering connections on `listener` as
/// described in the module docs until it completes; returns its output. Connections accepted
/// after that are left for the real server.
pub async fn answer_while<F: Future>(listener: &TcpListener, starting: F) -> F::Output {
    tokio::pin!(starting);
    loop {
        tokio::select! {
            biased;
            out = &mut starting => return out,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(answer(stream));
                }
                Err(err) => {
                    // EMFILE and the like: back off instead of spinning.
                    tracing::debug!(%err, "accept failed while starting");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

async fn answer(stream: TcpStream) {
    let service = hyper::service::service_fn(|_: Request<Incoming>| async move {
        Response::builder()
            .status(StatusCode::SERVICE_UNAVAILABLE)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(r#"{"ready":false,"status":"starting"}"#))
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    // A silent client is dropped after the timeout; errors are the client's business.
    let _ = tokio::time::timeout(ANSWER_TIMEOUT, conn).await;
}
