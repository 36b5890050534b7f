//! Live: `vpsie-lb-agent run` against the VPSie API emulator, a managed
//! Envoy and real backends: changes, rejections, reports, every API fault.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{RunningAgent, Via, agent_config_via, backends, lb_over, serves};
use serde_json::{Value, json};
use vpsie_lb_testkit::http::{self, count_by_backend};
use vpsie_lb_testkit::{free_port, poll_until};

const KEY: &str = "test-key-7f3a9c";

struct Api {
    port: u16,
}

impl Api {
    fn start() -> Api {
        let sim = vpsie_api_sim::Sim::new(KEY, None);
        let addr = sim.spawn(0).expect("start emulator");
        Api { port: addr.port() }
    }
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }
    fn control(&self, method: &str, path: &str, body: &Value) {
        let r = http::send(
            self.port,
            method,
            &format!("/_sim{path}"),
            &body.to_string(),
        )
        .expect("emulator control");
        assert!(r.status < 300, "{method} {path}: {} {}", r.status, r.body);
    }
    fn put_lb(&self, doc: &Value) {
        self.control(
            "PUT",
            &format!("/loadbalancers/{}", doc["id"].as_str().expect("id")),
            doc,
        );
    }
    /// The second load balancer every agent config here names, on `port`.
    fn put_other(&self, port: u16, pool: &[vpsie_lb_testkit::backend::HttpBackend]) {
        self.put_lb(&lb_over("other", "http", port, "round_robin", pool));
    }
    fn fault(&self, kind: &str, extra: Value) {
        let mut f = json!({"endpoint": "get_loadbalancer", "kind": kind});
        if let (Some(f), Some(e)) = (f.as_object_mut(), extra.as_object()) {
            f.extend(e.clone());
        }
        self.control("PUT", "/faults", &f);
    }
    fn report(&self, id: &str) -> Value {
        let r = http::get(self.port, &format!("/_sim/reports/{id}")).expect("report");
        serde_json::from_str(&r.body).expect("report json")
    }
    fn events(&self, id: &str) -> Vec<Value> {
        self.report(id)["events"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
    fn wait_event(&self, id: &str, kind: &str, containing: &str) -> Value {
        poll_until(
            &format!("{kind} event containing {containing:?}"),
            Duration::from_secs(20),
            || {
                let events = self.events(id);
                events
                    .iter()
                    .find(|e| e["type"] == kind && e.to_string().contains(containing))
                    .cloned()
                    .ok_or_else(|| format!("{events:#?}"))
            },
        )
    }
}

fn config(via: Via, dir: &Path, api: &Api, admin: u16) -> PathBuf {
    config_polling(via, dir, api, admin, "1s")
}

fn config_polling(via: Via, dir: &Path, api: &Api, admin: u16, poll: &str) -> PathBuf {
    let key = dir.join("api-key");
    std::fs::write(&key, format!("{KEY}\n")).expect("write key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod key");
    let source = format!(
        "vpsie:\n  api_url: {}\n  api_key_file: {}\n  loadbalancer_ids: [web, other]\n  poll_interval: {poll}\n",
        api.url(),
        key.display()
    );
    agent_config_via(dir, admin, &source, via)
}

fn with_check(mut doc: Value) -> Value {
    doc["health_check"] = json!({"type": "http", "path": "/healthz", "interval": 2, "timeout": 1, "healthy_threshold": 1, "unhealthy_threshold": 1});
    doc
}

fn agent_follows_the_api_reports_back_and_survives_bad_config(via: Via) {
    let dir = tempfile::tempdir().expect("tempdir");
    let api = Api::start();
    let bs = backends(&["a", "b", "c"]);
    let (port, other_port) = (free_port(), free_port());
    api.put_lb(&with_check(lb_over(
        "web",
        "http",
        port,
        "round_robin",
        &bs[..1],
    )));
    api.put_other(other_port, &bs[2..]);
    let agent = RunningAgent::start(dir.path(), &config(via, dir.path(), &api, free_port()));

    poll_until("web served", Duration::from_secs(30), || serves(port, "a"));
    api.wait_event("web", "config_applied", "confirmed by envoy");
    poll_until("status active", Duration::from_secs(10), || {
        let s = api.report("web")["status"].clone();
        if s["status"] == "active" && s["config_version"].as_str().is_some_and(|v| v.len() == 12) {
            Ok(())
        } else {
            Err(s.to_string())
        }
    });
    poll_until(
        "polls answered 304 to If-None-Match",
        Duration::from_secs(10),
        || {
            let r = http::get(api.port, "/_sim/requests").map_err(|e| e.to_string())?;
            let counts: Value = serde_json::from_str(&r.body).map_err(|e| e.to_string())?;
            if counts["not_modified"].as_u64().unwrap_or(0) >= 2 {
                Ok(())
            } else {
                Err(r.body)
            }
        },
    );
    poll_until("health of a reported", Duration::from_secs(10), || {
        let h = api.report("web")["health"]["a"]["status"].clone();
        if h == "healthy" {
            Ok(())
        } else {
            Err(h.to_string())
        }
    });

    // A backend added in the API is served within a poll plus the apply.
    api.put_lb(&with_check(lb_over(
        "web",
        "http",
        port,
        "round_robin",
        &bs[..2],
    )));
    poll_until("added backend served", Duration::from_secs(15), || {
        serves(port, "b")
    });

    // Health changes reach the API within a check cycle plus a poll.
    bs[1].set_health(503);
    poll_until("b reported unhealthy", Duration::from_secs(15), || {
        let h = api.report("web")["health"]["b"]["status"].clone();
        if h == "unhealthy" {
            Ok(())
        } else {
            Err(h.to_string())
        }
    });
    bs[1].set_health(200);

    // An invalid config is rejected with field paths; the previous one keeps
    // serving, and the other load balancer is untouched.
    let mut bad = lb_over("web", "http", port, "round_robin", &bs[..1]);
    bad["backends"][0]["port"] = json!(70000);
    api.put_lb(&bad);
    let event = api.wait_event(
        "web",
        "config_rejected",
        "backends[0].port: must be 1..=65535 (got 70000)",
    );
    assert_eq!(
        event["metadata"]["problems"][0],
        "backends[0].port: must be 1..=65535 (got 70000)"
    );
    assert!(
        event["timestamp"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z') && t.len() == 20),
        "{event}"
    );
    poll_until("status degraded", Duration::from_secs(10), || {
        let s = api.report("web")["status"]["status"].clone();
        if s == "degraded" {
            Ok(())
        } else {
            Err(s.to_string())
        }
    });
    assert!(
        count_by_backend(port, 10).contains_key("a"),
        "previous config stopped serving"
    );
    assert!(
        serves(other_port, "c").is_ok(),
        "the other load balancer was affected"
    );

    // Protocol change http -> tcp: the listener becomes a TCP proxy (no
    // Envoy headers in the answer) and the event is reported.
    api.put_lb(&lb_over("web", "tcp", port, "round_robin", &bs[..1]));
    poll_until(
        "tcp proxy live",
        Duration::from_secs(15),
        || match http::get(port, "/") {
            Ok(r) if r.status == 200 && r.header("x-envoy-upstream-service-time").is_none() => {
                Ok(())
            }
            other => Err(format!("{:?}", other.map(|r| r.headers))),
        },
    );
    poll_until(
        "applied event for the protocol change",
        Duration::from_secs(10),
        || {
            let n = api
                .events("web")
                .iter()
                .filter(|e| e["type"] == "config_applied")
                .count();
            if n >= 3 {
                Ok(())
            } else {
                Err(format!("{n} config_applied events"))
            }
        },
    );
    assert!(
        !agent.log().contains(KEY),
        "the api key appears in the agent's log"
    );
}

fn every_api_fault_keeps_envoy_serving_and_the_agent_recovers(via: Via) {
    let dir = tempfile::tempdir().expect("tempdir");
    let api = Api::start();
    let bs = backends(&["a", "b"]);
    let port = free_port();
    api.put_lb(&lb_over("web", "http", port, "round_robin", &bs[..1]));
    api.put_other(free_port(), &bs[1..]);
    let agent = RunningAgent::start(dir.path(), &config(via, dir.path(), &api, free_port()));
    poll_until("web served", Duration::from_secs(30), || serves(port, "a"));

    let faults: &[(&str, Value, &str)] = &[
        ("error_5xx", json!({"count": 2}), "status 503"),
        (
            "rate_limit",
            json!({"count": 2, "retry_after": 1}),
            "status 429",
        ),
        (
            "reset",
            json!({"count": 2}),
            "GET /loadbalancers/other: io: Connection reset",
        ),
        ("malformed_json", json!({"count": 2}), "malformed json"),
        ("huge_body", json!({"count": 1}), "limit 10485760"),
        (
            "wrong_content_type",
            json!({"count": 2}),
            "content type \\\"text/html\\\"",
        ),
        (
            "unauthorized",
            json!({"count": 2}),
            "api key rejected (status 401)",
        ),
        (
            "latency",
            json!({"count": 1, "ms": 11000}),
            "no complete answer within 10s (timed out)",
        ),
    ];
    for (kind, extra, needle) in faults {
        api.fault(kind, extra.clone());
        agent.wait_log(&format!("the {kind} fault in the log"), needle);
        let counts = count_by_backend(port, 10);
        let served = counts.get("a").unwrap_or(&0) + counts.get("b").unwrap_or(&0);
        assert_eq!(
            served, 10,
            "{kind}: requests failed while the api misbehaved: {counts:?}"
        );
        // Recovery: the next change made through the API goes live.
        let flip = if kind.len() % 2 == 0 {
            &bs[..1]
        } else {
            &bs[..2]
        };
        api.control("DELETE", "/faults", &json!({}));
        api.put_lb(&lb_over("web", "http", port, "round_robin", flip));
        poll_until(
            &format!("recovered after {kind}"),
            Duration::from_secs(20),
            || {
                let counts = count_by_backend(port, 10);
                if counts.contains_key("b") == (flip.len() == 2) {
                    Ok(())
                } else {
                    Err(format!("{counts:?}"))
                }
            },
        );
    }

    // An outage: one api_unreachable, then api_recovered, delivered once the API is back.
    api.control("PUT", "/faults", &json!({"endpoint": "*", "kind": "reset"}));
    agent.wait_log("outage noticed", "api_unreachable");
    api.control("DELETE", "/faults", &json!({}));
    api.wait_event("web", "api_recovered", "answers again");
    let unreachable = api
        .events("web")
        .iter()
        .filter(|e| e["type"] == "api_unreachable")
        .count();
    assert_eq!(
        unreachable, 1,
        "api_unreachable must be sent once per outage"
    );

    // Memory stays bounded after a 50 MiB body and the rest.
    let rss_kb: u64 = std::fs::read_to_string(format!("/proc/{}/status", agent.child.id()))
        .expect("agent status")
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")
                .map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0))
        })
        .expect("VmRSS");
    assert!(rss_kb < 150_000, "agent RSS {rss_kb} kB after the faults");
    eprintln!("agent RSS after all faults: {rss_kb} kB");
}

/// Every file under the watched directories is complete JSON or YAML and no
/// temp file is left: what Envoy can see is never partial.
///
/// Right after a SIGKILL a dot-prefixed temp file may exist (Envoy never reads
/// it; start-up sweeps it): pass `temp_allowed` then.
fn assert_no_partial_files(dir: &Path, temp_allowed: bool) {
    for e in std::fs::read_dir(dir).expect("read dir") {
        let p = e.expect("entry").path();
        let name = p.file_name().expect("name").to_string_lossy().into_owned();
        if p.is_dir() {
            assert_no_partial_files(&p, temp_allowed);
            continue;
        }
        if name == ".vpsie-lb.lock" {
            continue; // the writers' lock, outside every watched directory
        }
        if name.starts_with('.') {
            assert!(
                temp_allowed,
                "temp file left in a watched directory: {}",
                p.display()
            );
            continue;
        }
        let text = std::fs::read_to_string(&p).expect("read");
        if name.ends_with(".json") {
            let v: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is partial: {e}", p.display()));
            // The WAF service's policies sit beside Envoy's files, unversioned.
            assert!(
                v["version_info"].as_str().is_some() || name == "waf.json",
                "{} has no version",
                p.display()
            );
        }
    }
}

fn envoy_refusal_rolls_back_and_changes_under_load_drop_nothing_and_a_killed_agent_restarts_on_last_known_good(
    via: Via,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let api = Api::start();
    let bs = backends(&["a", "b", "c"]);
    let port = free_port();
    api.put_lb(&lb_over("web", "http", port, "round_robin", &bs));
    api.put_other(free_port(), &bs[..1]);
    let cfg = config(via, dir.path(), &api, free_port());
    let agent = RunningAgent::start(dir.path(), &cfg);
    poll_until("web served", Duration::from_secs(30), || serves(port, "c"));

    // Passes our validation and Envoy's validate mode; only the live Envoy
    // can refuse a port another process holds.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = squatter.local_addr().expect("addr").port();
    api.put_lb(&lb_over("web", "http", taken, "round_robin", &bs));
    let event = api.wait_event("web", "config_rolled_back", "Address already in use");
    assert!(
        event["metadata"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("lb_web")),
        "{event}"
    );
    assert!(
        serves(port, "a").is_ok(),
        "the previous config does not serve after the rollback"
    );
    drop(squatter);

    // The port and the algorithm change through the API.
    let new_port = free_port();
    api.put_lb(&lb_over("web", "http", new_port, "random", &bs));
    poll_until("web on its new port", Duration::from_secs(15), || {
        serves(new_port, "b")
    });
    poll_until(
        "old port closed",
        Duration::from_secs(15),
        || match http::get(port, "/") {
            Err(_) => Ok(()),
            Ok(r) => Err(format!("old port still answers {}", r.status)),
        },
    );

    // 20 changes (add, remove, reweight) under steady load: no request fails.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0u32, Vec::new());
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            while !stop.load(std::sync::atomic::Ordering::SeqCst)
                && std::time::Instant::now() < deadline
            {
                match http::get(new_port, "/") {
                    Ok(r) if r.status == 200 => ok += 1,
                    other => failed.push(format!("{:?}", other.map(|r| r.status))),
                }
            }
            (ok, failed)
        })
    };
    for i in 0..20u32 {
        let pool = match i % 3 {
            0 => &bs[..2],
            1 => &bs[1..],
            _ => &bs[..],
        };
        let mut doc = lb_over("web", "http", new_port, "random", pool);
        doc["backends"][0]["weight"] = json!(1 + i % 4);
        api.put_lb(&doc);
        let expect = pool[0].name().to_owned();
        poll_until(&format!("change {i} live"), Duration::from_secs(15), || {
            let applied = api
                .events("web")
                .iter()
                .filter(|e| e["type"] == "config_applied")
                .count();
            if applied >= 3 + i as usize {
                Ok(())
            } else {
                Err(format!("{applied} applied; backend {expect}"))
            }
        });
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, failed) = load.join().expect("load thread");
    assert!(ok > 100, "too little load to prove anything: {ok}");
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during 20 changes: {failed:?}",
        failed.len(),
        ok as usize + failed.len()
    );
    eprintln!("20 changes under load: {ok} requests, 0 failed");

    // Kill the agent in the middle of applying a change, then restart it
    // while the API is down: the last good config serves.
    // The kill lands wherever the 1 s cycle happens to be; the invariant
    // (atomic renames only) must hold at any point, so no timing is forced.
    api.put_lb(&lb_over("web", "http", new_port, "random", &bs[..1]));
    let mut agent = agent;
    let _ = agent.child.kill();
    let _ = agent.child.wait();
    assert_no_partial_files(&dir.path().join("envoy"), true);
    drop(agent); // also kills the orphaned Envoy: the restart must bring it back
    api.control("PUT", "/faults", &json!({"endpoint": "*", "kind": "reset"}));
    let again = RunningAgent::start(dir.path(), &cfg);
    poll_until(
        "last good config served after restart with the api down",
        Duration::from_secs(30),
        || {
            let counts = count_by_backend(new_port, 9);
            if counts.values().sum::<usize>() == 9 && !counts.contains_key("error") {
                Ok(())
            } else {
                Err(format!("{counts:?}"))
            }
        },
    );
    again.wait_log("api outage reported", "api_unreachable");
    assert_no_partial_files(&dir.path().join("envoy"), false);
}

/// The emulator with `web` on backend a (of a and b) and the other load
/// balancer on b, an agent polling every `poll`, and web served: what
/// several tests start from. Returns the port of web.
fn web_on_a(
    via: Via,
    dir: &Path,
    api: &Api,
    bs: &[vpsie_lb_testkit::backend::HttpBackend],
    poll: &str,
) -> (RunningAgent, u16) {
    let port = free_port();
    api.put_lb(&lb_over("web", "http", port, "round_robin", &bs[..1]));
    api.put_other(free_port(), &bs[1..]);
    let agent = RunningAgent::start(dir, &config_polling(via, dir, api, free_port(), poll));
    poll_until("first pass served", Duration::from_secs(30), || {
        serves(port, "a")
    });
    (agent, port)
}

fn sighup_runs_a_pass_at_once(via: Via) {
    let dir = tempfile::tempdir().expect("tempdir");
    let api = Api::start();
    let bs = backends(&["a", "b"]);
    // An hour between polls: only the signal can explain a quick change.
    let (agent, port) = web_on_a(via, dir.path(), &api, &bs, "1h");
    api.put_lb(&lb_over("web", "http", port, "round_robin", &bs));
    vpsie_lb_testkit::signal(agent.child.id(), "HUP");
    poll_until("change live after SIGHUP", Duration::from_secs(15), || {
        serves(port, "b")
    });
}

/// With the API's report endpoints blackholed (every PUT and POST hangs
/// while GET answers), each pass sent every pending report and waited out
/// each timeout: a second change took 32 s and SIGTERM 42 s. Reports now
/// go out on their own thread.
fn regression_blackholed_reporting_stalled_changes_and_sigterm(via: Via) {
    let dir = tempfile::tempdir().expect("tempdir");
    let api = Api::start();
    let bs = backends(&["a", "b"]);
    let (agent, port) = web_on_a(via, dir.path(), &api, &bs, "2s");
    for endpoint in ["put_status", "put_health", "post_event"] {
        api.control(
            "PUT",
            "/faults",
            &json!({"endpoint": endpoint, "kind": "latency", "ms": 600_000}),
        );
    }
    // Each change makes events, status and health to report, and each of
    // those requests now hangs. A poll interval (2 s) plus 5 s each.
    let within = Duration::from_secs(7);
    api.put_lb(&lb_over("web", "http", port, "round_robin", &bs));
    poll_until("first change live", within, || serves(port, "b"));
    api.put_lb(&lb_over("web", "http", port, "round_robin", &bs[1..]));
    poll_until("second change live", within, || {
        let counts = count_by_backend(port, 6);
        if counts.keys().eq(["b"].iter()) {
            Ok(())
        } else {
            Err(format!("{counts:?}"))
        }
    });
    // drain_time (1 s in these configs) plus 5 s.
    let mut agent = agent;
    let status = agent.terminate(Duration::from_secs(6));
    assert!(status.success(), "agent exit {status}\n{}", agent.log());
}

common::over_deliveries!(
    agent_follows_the_api_reports_back_and_survives_bad_config,
    every_api_fault_keeps_envoy_serving_and_the_agent_recovers,
    envoy_refusal_rolls_back_and_changes_under_load_drop_nothing_and_a_killed_agent_restarts_on_last_known_good,
    sighup_runs_a_pass_at_once,
    regression_blackholed_reporting_stalled_changes_and_sigterm,
);
