//! `fanout-loadtest`: drives thousands of Socket.IO clients against fanout (or any server on
//! its client contract, such as the Node.js reference peer) and measures fan-out latency,
//! loss, connect rate and the servers' memory. See `loadtest/README.md`.

use std::io::Write as _;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use fanout_loadtest::auth::AuthSource;
use fanout_loadtest::error::{Error, chain};
use fanout_loadtest::report::Report;
use fanout_loadtest::scenario::{self, ClientTransport, Plan, Workload};
use fanout_loadtest::{compare, plot, sys};

#[derive(Parser, Debug)]
#[command(
    name = "fanout-loadtest",
    version,
    about = "Socket.IO fan-out load generator for fanout (and any server speaking its client contract)",
    long_about = "Socket.IO fan-out load generator for fanout (and any server speaking its client contract).\n\n\
Every published message carries {publisher id, sequence number, send time} on one monotonic \
clock of this process; each delivery is recorded in an HdrHistogram, and loss, duplicates and \
reordering are counted per publisher and subscriber. Messages sent during the warm-up are \
ignored. The generator reports its own CPU use, event-loop lag and unread socket bytes and \
warns when it, rather than the server, may be the bottleneck.\n\n\
Examples:\n  \
fanout-loadtest run rooms --url http://127.0.0.1:3000\n  \
fanout-loadtest run storm --url http://127.0.0.1:7101,http://127.0.0.1:7102 --seed-redis redis://127.0.0.1:6390\n  \
fanout-loadtest run connect --clients 10000 --target-pid $(pgrep -n fanout-node)\n  \
fanout-loadtest compare --baseline node-ref a.json b.json --svg cmp.svg"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run a workload against one or more targets.
    Run(Box<RunArgs>),
    /// Print one side-by-side table from several `--json` reports, with ratios to a baseline.
    Compare(CompareArgs),
    /// Plot latency percentiles of several `--json` reports into one SVG.
    Plot(PlotArgs),
}

/// Options of `run`. Every option left out takes the workload's preset value.
#[derive(Args, Debug)]
struct RunArgs {
    /// Workload preset: rooms (3000 clients, 30 topics, 200 msg/s), storm (2000 clients,
    /// 1 topic, 20 msg/s), models (REST writes → /Model/POST; 1000 clients, 50 msg/s),
    /// redis (PUBLISH, or SPUBLISH on a cluster, on fanout:events; 2000 clients, 10 topics,
    /// 200 msg/s), connect (10000 authenticated connections each subscribed to 1 of 100
    /// topics, held idle: connects/s, subscribe acks, RSS per connection), soak
    /// (2000 clients, 20 topics, 100 msg/s for 10 min, samples every 10 s).
    #[arg(value_enum)]
    workload: Workload,

    /// Target base URL(s), comma-separated or repeated; clients are spread round-robin.
    #[arg(
        long = "url",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:3000"
    )]
    urls: Vec<String>,
    /// Subscriber (or, for connect, idle) connections; publishers are extra.
    #[arg(long, short = 'c')]
    clients: Option<usize>,
    /// Protocol of the clients: socketio, or ws (fanout's plain-WebSocket `/ws`; connect
    /// workload only).
    #[arg(long, value_enum, default_value = "socketio")]
    transport: ClientTransport,
    /// Number of topics; client i subscribes topic i mod T (models: models Load0..LoadT-1).
    #[arg(long, short = 't')]
    topics: Option<usize>,
    /// Total publish rate, messages per second, over all publishers.
    #[arg(long, short = 'r')]
    rate: Option<f64>,
    /// Publishers: Socket.IO connections (rooms/storm/soak), HTTP workers (models) or Redis
    /// publishers (redis). Publisher j publishes round-robin to topics k with k mod P = j.
    #[arg(long, short = 'p')]
    publishers: Option<usize>,
    /// Size of each published `data` payload in bytes of JSON (stamp included).
    #[arg(long, default_value_t = 128)]
    payload: usize,
    /// Measured publishing time (e.g. 30s, 10m).
    #[arg(long, short = 'd', value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Publishing time before measurement starts; its messages are ignored.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    warmup: Duration,
    /// Time to wait for in-flight deliveries after publishing stops (late ones count as lost).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "3s")]
    drain: Duration,
    /// connect: how long to hold the idle connections before measuring memory.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    hold: Duration,
    /// connect: after the hold, publish this many messages of --payload bytes per topic on
    /// the Redis events channel (needs --seed-redis or --redis-url and --target-pid) and
    /// report the targets' RSS before, at the peak and after --storm-settle.
    #[arg(long, default_value_t = 0)]
    storm_rounds: usize,
    /// connect: how long to follow RSS after the storm starts.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    storm_settle: Duration,
    /// Handshakes in flight at most.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// New connections per second; 0 = as fast as --connect-concurrency allows.
    #[arg(long, default_value_t = 2000.0)]
    connect_rate: f64,
    /// Per-connection handshake timeout.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "15s")]
    connect_timeout: Duration,

    /// Read tokens from this file (one per line) instead of logging in.
    #[arg(long, conflicts_with = "seed_redis")]
    token_file: Option<String>,
    /// Write random tokens straight into this Redis (`<prefix>:token:<sha256>`), for servers
    /// without a REST API such as node-ref: `redis://…`, or `redis+cluster://h1:p1,h2:p2` for
    /// a Redis Cluster (the forms of FANOUT_REDIS_URL).
    #[arg(long)]
    seed_redis: Option<String>,
    /// Distinct users / tokens (clients share them round-robin).
    #[arg(long, default_value_t = 16)]
    users: usize,
    /// Username prefix for REST logins (users are created if missing).
    #[arg(long, default_value = "loadtest")]
    user_prefix: String,
    /// Password for REST-created users (≥ 6 characters).
    #[arg(long, default_value = "loadtest-password")]
    password: String,
    /// Redis key prefix (FANOUT_PREFIX) for --seed-redis.
    #[arg(long, default_value = "fanout")]
    key_prefix: String,
    /// Base URL for REST logins (default: the first --url).
    #[arg(long)]
    rest_url: Option<String>,

    /// redis workload: Redis URL to PUBLISH on (default: --seed-redis); SPUBLISH on a
    /// `redis+cluster://` URL (sharded pub/sub, as fanout nodes on a cluster subscribe).
    #[arg(long)]
    redis_url: Option<String>,
    /// redis workload: events channel.
    #[arg(long, default_value = "fanout:events")]
    events_channel: String,
    /// Topic name prefix: topics are `<prefix>.<k>`.
    #[arg(long, default_value = "lt")]
    topic_prefix: String,
    /// models workload: model name prefix (`<prefix><k>`, topic `/<prefix><k>/POST`).
    #[arg(long, default_value = "Load")]
    model_prefix: String,

    /// Spread connections over source addresses 127.0.0.1..=N (0 = automatic: one per
    /// 25,000 connections, since one source address has ~28k ephemeral ports).
    #[arg(long, default_value_t = 0)]
    source_ips: usize,
    /// PID of a target server process (repeatable): RSS from /proc/<pid>/status.
    #[arg(long = "target-pid")]
    target_pids: Vec<u32>,
    /// Interval of the periodic samples (connections, deliveries, targets' RSS).
    #[arg(long, value_parser = humantime::parse_duration)]
    sample_interval: Option<Duration>,
    /// tokio worker threads (default: number of CPUs).
    #[arg(long)]
    threads: Option<usize>,

    /// Label of this run in tables, JSON and plots (default: the workload name).
    #[arg(long)]
    label: Option<String>,
    /// Write the JSON report to this file (`-` = stdout; the table then goes to stderr).
    #[arg(long)]
    json: Option<String>,
    /// Write a latency percentile plot (SVG) to this file.
    #[arg(long)]
    svg: Option<String>,
    /// No live progress line.
    #[arg(long)]
    no_progress: bool,
}

#[derive(Args, Debug)]
struct CompareArgs {
    /// JSON reports written by `run --json` (one per system; labels name the columns).
    #[arg(required = true)]
    reports: Vec<String>,
    /// Label of the baseline run (default: the first report).
    #[arg(long)]
    baseline: Option<String>,
    /// A note printed under the header (e.g. "fanout: 1 embedded node; node-ref: 1 node").
    #[arg(long)]
    note: Option<String>,
    /// Also plot the runs' latency percentiles into this SVG.
    #[arg(long)]
    svg: Option<String>,
}

#[derive(Args, Debug)]
struct PlotArgs {
    /// JSON reports written by `run --json`.
    #[arg(required = true)]
    reports: Vec<String>,
    /// Output SVG file.
    #[arg(long, required = true)]
    svg: String,
    /// Plot title.
    #[arg(long, default_value = "fan-out latency by percentile")]
    title: String,
}

struct Preset {
    clients: usize,
    topics: usize,
    rate: f64,
    publishers: usize,
    duration: Duration,
    sample: Duration,
}

fn preset(w: Workload) -> Preset {
    let s = Duration::from_secs;
    match w {
        Workload::Rooms => Preset {
            clients: 3000,
            topics: 30,
            rate: 200.0,
            publishers: 10,
            duration: s(30),
            sample: s(5),
        },
        Workload::Storm => Preset {
            clients: 2000,
            topics: 1,
            rate: 20.0,
            publishers: 2,
            duration: s(30),
            sample: s(5),
        },
        Workload::Models => Preset {
            clients: 1000,
            topics: 1,
            rate: 50.0,
            publishers: 4,
            duration: s(30),
            sample: s(5),
        },
        Workload::Redis => Preset {
            clients: 2000,
            topics: 10,
            rate: 200.0,
            publishers: 4,
            duration: s(30),
            sample: s(5),
        },
        Workload::Connect => Preset {
            clients: 10_000,
            topics: 100,
            rate: 0.0,
            publishers: 0,
            duration: s(0),
            sample: s(5),
        },
        Workload::Soak => Preset {
            clients: 2000,
            topics: 20,
            rate: 100.0,
            publishers: 10,
            duration: s(600),
            sample: s(10),
        },
    }
}

fn load_reports(paths: &[String]) -> Result<Vec<Report>, Error> {
    paths
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).map_err(|source| Error::File {
                path: p.clone(),
                source,
            })?;
            serde_json::from_str(&text).map_err(|source| Error::Report {
                path: p.clone(),
                source,
            })
        })
        .collect()
}

fn run_cmd(a: RunArgs) -> Result<(), Error> {
    let p = preset(a.workload);
    let threads = a.threads.unwrap_or_else(sys::cpus).max(1);
    let first_url = a.urls.first().cloned().unwrap_or_default();
    let auth = if let Some(f) = &a.token_file {
        AuthSource::File(f.clone())
    } else if let Some(r) = &a.seed_redis {
        AuthSource::SeedRedis {
            url: r.clone(),
            count: a.users,
            key_prefix: a.key_prefix.clone(),
            ttl: 86_400,
        }
    } else {
        AuthSource::Rest {
            base: a.rest_url.clone().unwrap_or(first_url),
            users: a.users,
            prefix: a.user_prefix.clone(),
            password: a.password.clone(),
        }
    };
    let clients = a.clients.unwrap_or(p.clients);
    let topics = a.topics.unwrap_or(p.topics).max(1);
    let rate = a.rate.unwrap_or(p.rate);
    let publishers = a.publishers.unwrap_or(p.publishers).max(1);
    let duration = a.duration.unwrap_or(p.duration);
    let params = serde_json::json!({
        "workload": a.workload,
        "urls": a.urls,
        "clients": clients,
        "transport": a.transport,
        "topics": topics,
        "rate": rate,
        "publishers": publishers,
        "payload": a.payload,
        "duration_s": duration.as_secs_f64(),
        "warmup_s": a.warmup.as_secs_f64(),
        "drain_s": a.drain.as_secs_f64(),
        "hold_s": a.hold.as_secs_f64(),
        "storm_rounds": a.storm_rounds,
        "storm_settle_s": a.storm_settle.as_secs_f64(),
        "connect_concurrency": a.connect_concurrency,
        "connect_rate": a.connect_rate,
        "threads": threads,
        "auth": if a.token_file.is_some() { "token-file" } else if a.seed_redis.is_some() { "seed-redis" } else { "rest" },
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "nproc": sys::cpus(),
        "mem_total": sys::mem_total(),
    });
    let plan = Plan {
        workload: a.workload,
        label: a
            .label
            .clone()
            .unwrap_or_else(|| a.workload.name().to_owned()),
        urls: a.urls.clone(),
        clients,
        transport: a.transport,
        topics,
        rate,
        publishers,
        payload: a.payload,
        duration,
        warmup: a.warmup,
        drain: a.drain,
        hold: a.hold,
        storm_rounds: a.storm_rounds,
        storm_settle: a.storm_settle,
        connect_concurrency: a.connect_concurrency,
        connect_rate: a.connect_rate,
        connect_timeout: a.connect_timeout,
        auth,
        redis_url: a.redis_url.clone().or_else(|| a.seed_redis.clone()),
        events_channel: a.events_channel.clone(),
        topic_prefix: a.topic_prefix.clone(),
        model_prefix: a.model_prefix.clone(),
        source_ips: a.source_ips,
        target_pids: a.target_pids.clone(),
        sample_interval: a.sample_interval.unwrap_or(p.sample),
        progress: !a.no_progress,
        threads,
        params,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .map_err(Error::Runtime)?;
    let report = rt.block_on(scenario::run(plan))?;
    // Closing thousands of sockets can leave tasks behind; don't wait for them.
    rt.shutdown_timeout(Duration::from_secs(1));

    let table = report.table();
    if a.json.as_deref() == Some("-") {
        eprint!("{table}");
    } else {
        print!("{table}");
    }
    if let Some(path) = &a.json {
        let text = serde_json::to_string_pretty(&report)?;
        if path == "-" {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{text}");
        } else {
            std::fs::write(path, text).map_err(|source| Error::File {
                path: path.clone(),
                source,
            })?;
        }
    }
    if let Some(svg) = &a.svg {
        let title = format!("{} — fan-out latency by percentile", report.workload);
        plot::latency_svg(std::slice::from_ref(&report), svg, &title)?;
    }
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Run(a) => run_cmd(*a),
        Cmd::Compare(c) => load_reports(&c.reports).and_then(|runs| {
            let baseline = c
                .baseline
                .as_ref()
                .and_then(|b| runs.iter().position(|r| &r.label == b))
                .unwrap_or(0);
            print!("{}", compare::table(&runs, baseline, c.note.as_deref()));
            match &c.svg {
                Some(svg) => {
                    let title = format!(
                        "{} — fan-out latency by percentile",
                        runs.first().map_or("", |r| r.workload.as_str())
                    );
                    plot::latency_svg(&runs, svg, &title)
                }
                None => Ok(()),
            }
        }),
        Cmd::Plot(p) => {
            load_reports(&p.reports).and_then(|runs| plot::latency_svg(&runs, &p.svg, &p.title))
        }
    };
    if let Err(e) = res {
        eprintln!("fanout-loadtest: {}", chain(&e));
        std::process::exit(1);
    }
}
