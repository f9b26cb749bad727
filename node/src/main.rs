//! The `fanout-node` binary: parse configuration, set up logging, run until SIGTERM/SIGINT.

use clap::Parser;
use fanout_node::config::{Config, LogFormat};
use fanout_node::methods::MethodRegistry;
use tracing_subscriber::EnvFilter;

/// jemalloc returns freed memory to the OS over time. glibc's malloc raises its mmap
/// threshold after the first 19 MiB argon2 buffer is freed and then keeps every later one in
/// its arenas: a node that had served a few dozen logins sat at ~300 MiB before holding a
/// single connection. (Feature `system-allocator` builds with glibc's malloc instead, to
/// measure the difference: docs/BENCHMARKS.md.)
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn init_tracing(cfg: &Config) {
    let filter = EnvFilter::try_new(&cfg.log).unwrap_or_else(|err| {
        eprintln!("invalid FANOUT_LOG {:?} ({err}); using \"info\"", cfg.log);
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match cfg.log_format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
        LogFormat::Text => builder.init(),
    }
}

/// A Redis URL with its password replaced, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

fn main() -> std::process::ExitCode {
    let open_files = fanout_node::config::raise_open_file_limit();
    let cfg = Config::parse();
    init_tracing(&cfg);
    if let Err(err) = cfg.validate() {
        tracing::error!("{err}");
        return std::process::ExitCode::from(2);
    }
    // Before the runtime's threads take their arenas.
    if let Err(err) = fanout_node::alloc::tune(&cfg.alloc_tuning()) {
        tracing::warn!(%err, "allocator tuning not applied");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!(%err, "cannot start the runtime");
            return std::process::ExitCode::from(1);
        }
    };
    runtime.block_on(run(cfg, open_files))
}

async fn run(cfg: Config, open_files: Option<u64>) -> std::process::ExitCode {
    tracing::info!(
        bind = %cfg.bind,
        redis = cfg.redis_url.as_deref().map(redact).unwrap_or_else(|| "embedded".into()),
        prefix = %cfg.prefix,
        adapter_key = %cfg.adapter_key,
        auth_timeout_ms = cfg.auth_timeout_ms,
        token_ttl = cfg.token_ttl,
        token_max_ttl = cfg.token_max_ttl,
        max_payload = cfg.max_payload,
        ping_interval_ms = cfg.ping_interval_ms,
        ping_timeout_ms = cfg.ping_timeout_ms,
        max_connections = cfg.max_connections,
        open_file_limit = ?open_files,
        cors = ?cfg.cors_origins,
        "starting fanout-node"
    );
    let listener = match tokio::net::TcpListener::bind(cfg.bind).await {
        Ok(listener) => listener,
        Err(err) => {
            tracing::error!(%err, bind = %cfg.bind, "cannot bind");
            return std::process::ExitCode::from(1);
        }
    };
    // Connecting to Redis may take a while (a cluster not up yet): answer 503 meanwhile.
    let build = fanout_node::build(cfg, MethodRegistry::with_builtins());
    let node = match fanout_node::starting::answer_while(&listener, build).await {
        Ok(node) => node,
        Err(err) => {
            tracing::error!(%err, "cannot start");
            return std::process::ExitCode::from(1);
        }
    };
    match listener.local_addr() {
        Ok(addr) => tracing::info!(%addr, node = %node.state.node_id, "listening"),
        Err(err) => tracing::warn!(%err, "listening (address unknown)"),
    }
    match fanout_node::serve(node, listener, fanout_node::shutdown::signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(%err, "server failed");
            std::process::ExitCode::from(1)
        }
    }
}
