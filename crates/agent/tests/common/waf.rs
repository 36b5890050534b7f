//! The WAF beside a lab: the service started on the lab's socket with the
//! policies the lab renders, its log and metrics read back; or the filter
//! module inside the lab's Envoy (`--waf-engine envoy`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use vpsie_lb_testkit::backend::HttpBackend;
use vpsie_lb_testkit::http::{Response, connect, read_response};
use vpsie_lb_testkit::poll_until;

use super::{Lab, lb_over};

/// The service binary, built beside the agent's (`cargo test --workspace`
/// builds it; a narrower run builds it here).
pub fn waf_bin() -> PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    let bin = Path::new(super::agent_bin()).with_file_name("vpsie-lb-waf");
    BUILT.call_once(|| {
        if !bin.exists() {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let ok = Command::new(cargo)
                .args(["build", "--quiet", "-p", "vpsie-lb-waf"])
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "building vpsie-lb-waf failed");
        }
    });
    bin
}

/// The filter module, built beside the agent's binary. No test target
/// depends on it, so `cargo test` would not rebuild it after a change:
/// each test process brings it up to date once (a no-op when it is).
pub fn filter_module() -> PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    let module = Path::new(super::agent_bin()).with_file_name("libvpsie_lb_waf_filter.so");
    BUILT.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "--quiet", "--locked", "-p", "vpsie-lb-waf-filter"]);
        // The agent's profile, so the module lands beside it.
        if module.parent().is_some_and(|d| d.ends_with("release")) {
            build.arg("--release");
        }
        let ok = build.status().is_ok_and(|s| s.success());
        assert!(ok, "building vpsie-lb-waf-filter failed");
    });
    module
}

/// Where a lab's WAF inspects requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// The `vpsie-lb-waf` service, over ext_authz.
    Service,
    /// The `vpsie-lb-waf-filter` module inside Envoy.
    InEnvoy,
}

/// What inspects a lab's requests.
pub struct Inspector {
    /// The service, with [`Engine::Service`].
    pub service: Option<Waf>,
    envoy_log: PathBuf,
}

impl Inspector {
    /// The inspecting side's log: the service's, or Envoy's.
    pub fn log(&self) -> String {
        match &self.service {
            Some(s) => s.log(),
            None => std::fs::read_to_string(&self.envoy_log).unwrap_or_default(),
        }
    }
}

/// A running WAF service.
pub struct Waf {
    child: Child,
    log: PathBuf,
    socket: PathBuf,
    policies: PathBuf,
    /// Its flags beyond the paths.
    extra: Vec<String>,
}

impl Waf {
    pub fn start(socket: &Path, policies: &Path, log: &Path, extra: &[String]) -> Waf {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("waf log");
        let child = Command::new(waf_bin())
            .arg("--socket")
            .arg(socket)
            .arg("--config")
            .arg(policies)
            .arg("--metrics-socket")
            .arg(socket.with_file_name("waf-metrics.sock"))
            .args(extra)
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .expect("start vpsie-lb-waf");
        let waf = Waf {
            child,
            log: log.to_owned(),
            socket: socket.to_owned(),
            policies: policies.to_owned(),
            extra: extra.to_vec(),
        };
        // Until it listens, a fail-open load balancer would pass everything
        // uninspected and prove nothing.
        poll_until("the waf service listens", Duration::from_secs(30), || {
            if waf.log().contains("serving ext_authz") {
                Ok(())
            } else {
                Err(waf.log())
            }
        });
        waf
    }

    /// Where its log goes.
    pub fn log_path(&self) -> PathBuf {
        self.log.clone()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The service's counters (`GET /metrics` on its metrics socket).
    pub fn metrics(&self) -> String {
        use std::io::Read;
        let Ok(mut s) =
            std::os::unix::net::UnixStream::connect(self.socket.with_file_name("waf-metrics.sock"))
        else {
            return String::new();
        };
        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: waf\r\n\r\n");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn restart(&mut self) {
        self.kill();
        *self = Waf::start(
            &self.socket.clone(),
            &self.policies.clone(),
            &self.log.clone(),
            &self.extra.clone(),
        );
    }
}

impl Drop for Waf {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A lab whose Envoy consults a WAF service started beside it.
pub fn start(via: super::Via, doc: &Value) -> (Lab, Waf) {
    serve(Lab::new(via), doc)
}

/// `lab` serving `doc`, its requests inspected by `engine`.
pub fn serve_on(mut lab: Lab, engine: Engine, doc: &Value) -> (Lab, Inspector) {
    let envoy_log = lab.dir.path().join("envoy.log");
    if engine == Engine::Service {
        let (lab, waf) = serve(lab, doc);
        let service = Some(waf);
        return (lab, Inspector { service, envoy_log });
    }
    std::fs::create_dir_all(lab.out_dir()).expect("out dir");
    render_on(&mut lab, engine, doc);
    lab.start_envoy();
    let service = None;
    (lab, Inspector { service, envoy_log })
}

/// A lab serving `doc`, its requests inspected by `engine`.
pub fn start_on(via: super::Via, engine: Engine, doc: &Value) -> (Lab, Inspector) {
    serve_on(Lab::new(via), engine, doc)
}

/// `lab` serving `doc`, its Envoy consulting a WAF service started beside it.
pub fn serve(lab: Lab, doc: &Value) -> (Lab, Waf) {
    serve_with(lab, doc, &[])
}

/// [`serve`], the service started with `extra` flags.
pub fn serve_with(mut lab: Lab, doc: &Value, extra: &[&str]) -> (Lab, Waf) {
    let socket = lab.dir.path().join("waf.sock");
    std::fs::create_dir_all(lab.out_dir()).expect("out dir");
    let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
    let waf = Waf::start(
        &socket,
        &lab.out_dir().join("waf.json"),
        &lab.dir.path().join("waf.log"),
        &extra,
    );
    let f = flags(&lab);
    let f: Vec<&str> = f.iter().map(String::as_str).collect();
    lab.render_with(doc, &f);
    lab.start_envoy();
    (lab, waf)
}

/// The render flags of every render in a lab: the same each time, or the
/// listeners would change with them.
pub fn flags(lab: &Lab) -> Vec<String> {
    flags_on(lab, Engine::Service)
}

/// [`flags`] for `engine`.
fn flags_on(lab: &Lab, engine: Engine) -> Vec<String> {
    let socket = lab.dir.path().join("waf.sock");
    let mut flags: Vec<String> = vec![
        "--waf-socket".into(),
        socket.to_str().expect("utf-8").into(),
        "--access-log-sample-percent".into(),
        "100".into(),
    ];
    if engine == Engine::InEnvoy {
        let module = filter_module();
        flags.extend([
            "--waf-engine".into(),
            "envoy".into(),
            "--waf-filter".into(),
            module.to_str().expect("utf-8").into(),
        ]);
    }
    flags
}

pub fn render(lab: &mut Lab, doc: &Value) {
    render_on(lab, Engine::Service, doc);
}

/// Renders `doc` with the WAF on `engine`.
pub fn render_on(lab: &mut Lab, engine: Engine, doc: &Value) {
    let flags = flags_on(lab, engine);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    lab.render_with(doc, &flags);
}

/// Each test over both WAF engines, and each of those over both
/// deliveries: `fn name(via: Via, engine: Engine)`.
#[allow(unused_macros)]
macro_rules! over_deliveries_and_engines {
    ($($name:ident),* $(,)?) => {
        mod service {
            $(fn $name(via: crate::common::Via) {
                super::$name(via, crate::common::waf::Engine::Service)
            })*
            crate::common::over_deliveries!($($name),*);
        }
        mod in_envoy {
            $(fn $name(via: crate::common::Via) {
                super::$name(via, crate::common::waf::Engine::InEnvoy)
            })*
            crate::common::over_deliveries!($($name),*);
        }
    };
}
#[allow(unused_imports)]
pub(crate) use over_deliveries_and_engines;

/// One request with `headers` and `body`.
pub fn send(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut s = connect(None, port).expect("connect");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: shop.example.com\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    let has_ua = headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("user-agent"));
    if !has_ua {
        head.push_str("User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\nAccept: text/html\r\n");
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).expect("send head");
    s.write_all(body).expect("send body");
    read_response(&mut s).expect("answer")
}

/// A document: load balancer `shop` on `port` over `bs`, with `waf`.
pub fn with_waf(port: u16, bs: &[HttpBackend], waf: Value) -> Value {
    let mut doc = lb_over("shop", "http", port, "round_robin", bs);
    doc["waf"] = waf;
    doc
}
