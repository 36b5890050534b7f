//! `vpsie-lb-agent`: validates VPSie load-balancer documents, renders them
//! into Envoy configuration, and (`run`) keeps Envoy in step with the API.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = vpsie_lb_agent::commands::Cli::parse();
    match vpsie_lb_agent::commands::run(cli) {
        Ok(code) => code,
        Err(err) => {
            // Print the whole chain once, here, where the error is handled.
            let mut msg = format!("error: {err}");
            for cause in err.chain().skip(1) {
                msg.push_str(&format!(": {cause}"));
            }
            eprintln!("{msg}");
            ExitCode::from(1)
        }
    }
}
