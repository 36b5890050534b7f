//! A demo backend: answers every HTTP request with its name, `/healthz` with 200.
//!
//! Usage: `vpsie-lb-demo-backend NAME PORT`

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(name), Some(port)) = (args.next(), args.next()) else {
        eprintln!("usage: vpsie-lb-demo-backend NAME PORT");
        std::process::exit(2);
    };
    let Ok(port) = port.parse::<u16>() else {
        eprintln!("port {port:?}: must be 1..=65535");
        std::process::exit(2);
    };
    let _backend = match vpsie_lb_testkit::backend::HttpBackend::start_on(&name, port) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("listen on 127.0.0.1:{port}: {e}");
            std::process::exit(1);
        }
    };
    eprintln!("{name} listening on 127.0.0.1:{port}");
    loop {
        std::thread::park();
    }
}
