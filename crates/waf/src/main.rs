//! `vpsie-lb-waf`: the WAF inspection service (see the library's docs).

use std::path::PathBuf;

use clap::Parser;

/// ModSecurity with the OWASP Core Rule Set, for Envoy's ext_authz.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// The Unix socket Envoy connects to.
    #[arg(long, default_value = "/run/vpsie-lb-waf/waf.sock")]
    socket: PathBuf,
    /// The per-load-balancer policies the agent writes.
    #[arg(long, default_value = "/etc/envoy/waf.json")]
    config: PathBuf,
    /// The Core Rule Set (holding `rules/`).
    #[arg(long, default_value = vpsie_lb_waf::engine::DEFAULT_CRS_DIR)]
    crs_dir: PathBuf,
    /// The rule set's setup file.
    #[arg(long, default_value = vpsie_lb_waf::engine::DEFAULT_CRS_SETUP)]
    crs_setup: PathBuf,
    /// Where `GET /metrics` (Prometheus text) is served; `off` serves none.
    #[arg(long, default_value = "/run/vpsie-lb-waf/metrics.sock")]
    metrics_socket: String,
    /// Inspections run at once (default: one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// Inspections that may wait for a worker (default: 128 per worker);
    /// past that a request is turned away and Envoy applies `fail_open`.
    #[arg(long)]
    queue: Option<usize>,
    /// Longest wait for a worker, in milliseconds: below Envoy's 250 ms
    /// timeout, so a request turned away is answered before Envoy gives up.
    #[arg(long, default_value_t = 200)]
    queue_wait_ms: u64,
    /// `json` (for journald) or `text`.
    #[arg(long, default_value = "json")]
    log_format: String,
    /// Compile the rule set at every paranoia level and exit: 0 when it
    /// loads (an install check, like `nginx -t`).
    #[arg(long)]
    check: bool,
}

/// Compiles the rule set at each paranoia level.
fn check(crs_dir: &std::path::Path, crs_setup: &std::path::Path) -> std::process::ExitCode {
    let engine = vpsie_lb_waf::engine::Engine::new(crs_dir, crs_setup);
    for level in 1..=4 {
        let policy = vpsie_lb_waf::config::Policy {
            mode: vpsie_lb_waf::config::Mode::Block,
            paranoia_level: level,
            exclusions: Vec::new(),
            oversize_body: Default::default(),
        };
        if let Err(e) = engine.rules(&policy) {
            eprintln!("vpsie-lb-waf: paranoia level {level}: {e}");
            return std::process::ExitCode::FAILURE;
        }
    }
    println!(
        "the rule set in {} loads at paranoia levels 1 to 4",
        crs_dir.display()
    );
    std::process::ExitCode::SUCCESS
}

/// jemalloc for every allocation in the process, libmodsecurity's too:
/// its unprefixed `malloc` replaces glibc's (see Cargo.toml for the measure).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if args.check {
        return check(&args.crs_dir, &args.crs_setup);
    }
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr);
    if args.log_format == "text" {
        builder.init();
    } else {
        builder.json().flatten_event(true).init();
    }
    let workers = args.workers.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let settings = vpsie_lb_waf::Settings {
        socket: args.socket,
        config: args.config,
        crs_dir: args.crs_dir,
        crs_setup: args.crs_setup,
        metrics_socket: (args.metrics_socket != "off").then(|| PathBuf::from(&args.metrics_socket)),
        workers,
        queue: args.queue.unwrap_or(workers * 128),
        queue_wait: std::time::Duration::from_millis(args.queue_wait_ms),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vpsie-lb-waf: runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(vpsie_lb_waf::serve(settings)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "vpsie-lb-waf stopped");
            std::process::ExitCode::FAILURE
        }
    }
}
