//! `vpsie-api-sim`: runs the VPSie API emulator on 127.0.0.1.

use std::path::PathBuf;

use clap::Parser;

/// Emulates the VPSie load-balancer agent API and the public `/api/v1/lb` API, with fault injection.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Port on 127.0.0.1.
    #[arg(long, default_value_t = 8480)]
    port: u16,
    /// File holding the API key clients must send as `Authorization: Bearer <key>` (or `Vpsie-Auth: <key>`).
    #[arg(long, value_name = "FILE")]
    api_key_file: PathBuf,
    /// Keep the load balancers in this JSON file across restarts.
    #[arg(long, value_name = "FILE")]
    state: Option<PathBuf>,
}

fn main() {
    let args = Args::parse();
    let key = match std::fs::read_to_string(&args.api_key_file) {
        Ok(k) if !k.trim().is_empty() => k.trim().to_owned(),
        Ok(_) => {
            eprintln!("{}: empty api key file", args.api_key_file.display());
            std::process::exit(2);
        }
        Err(e) => {
            eprintln!("{}: {e}", args.api_key_file.display());
            std::process::exit(2);
        }
    };
    let sim = vpsie_api_sim::Sim::new(&key, args.state);
    let listener = match std::net::TcpListener::bind(("127.0.0.1", args.port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("listen on 127.0.0.1:{}: {e}", args.port);
            std::process::exit(1);
        }
    };
    eprintln!(
        "vpsie-api-sim: agent api at http://127.0.0.1:{0}/v1, public api at http://127.0.0.1:{0}/api/v1/lb, control at /_sim",
        args.port
    );
    sim.serve(listener);
}
