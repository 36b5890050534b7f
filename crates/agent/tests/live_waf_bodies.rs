//! The WAF and request bodies, on a real Envoy, over both engines: uploads
//! over HTTP/1.1, 2 and 3, and bodies past the inspection limits.

mod common;

use std::io::Write;
use std::time::Duration;

use common::waf::{Engine, over_deliveries_and_engines, send, serve_on, start_on, with_waf};
use common::{Lab, Via, backends};
use serde_json::json;
use vpsie_lb_testkit::backend::HttpBackend;
use vpsie_lb_testkit::http::{connect, read_response};
use vpsie_lb_testkit::{free_port, poll_until};

/// A 1 MiB multipart upload to `port` (server name lb.test) with curl
/// over `version` (`--http1.1`, `--http2`); the status and the version
/// curl spoke.
fn curl_upload(port: u16, version: &str, file: &std::path::Path) -> String {
    let out = std::process::Command::new("curl")
        .args([
            "-sk",
            version,
            "--resolve",
            &format!("lb.test:{port}:127.0.0.1"),
        ])
        .arg("-F")
        .arg(format!("file=@{};type=image/jpeg", file.display()))
        .args([
            "-A",
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        ])
        .args(["-H", "Accept: text/html", "-o", "/dev/null"])
        .args(["-w", "%{http_code} %{http_version}"])
        .arg(format!("https://lb.test:{port}/upload"))
        .output()
        .expect("run curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Over HTTP/2 an upload past about 80 KiB got 413 on a WAF load balancer
/// and one past 128 KiB was reset; over HTTP/3 every upload past the 32 KiB
/// buffer failed. A 1 MiB upload now passes over HTTP/1.1, 2 and 3 alike.
fn regression_http_2_and_3_uploads_failed_on_a_waf_load_balancer(via: Via, engine: Engine) {
    let backend = HttpBackend::start("a");
    let lab = Lab::new(via);
    let (mut doc, port, _) = common::https_lb(lab.dir.path(), &backend, json!({}));
    doc["http3"] = json!(true);
    doc["waf"] = json!({"mode": "block"});
    let file = lab.dir.path().join("photo.jpg");
    std::fs::write(
        &file,
        (0..1024 * 1024)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    )
    .expect("the file to upload");
    let (_lab, waf) = serve_on(lab, engine, &doc);
    poll_until(
        "served over http/2",
        Duration::from_secs(30),
        || match curl_upload(port, "--http2", &file).as_str() {
            "200 2" => Ok(()),
            other => Err(format!("{other}: {}", waf.log())),
        },
    );
    assert_eq!(curl_upload(port, "--http1.1", &file), "200 1.1");
    let over_h3 = vpsie_lb_testkit::h3::upload(port, "/upload", "lb.test", 1024 * 1024)
        .expect("an upload over http/3");
    assert_eq!(over_h3.status, 200, "{over_h3:?}: {}", waf.log());
}

/// A POST of `body` as `content_type` to `path`: the status, or `None`
/// when the connection was reset before it could be read. Envoy may
/// answer 413 before it has read the whole body, so a failed write is not
/// a failure, and closing on the rest of the body may lose the answer.
fn post(port: u16, path: &str, content_type: &str, body: &[u8]) -> Option<u16> {
    let mut s = connect(None, port).expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: shop.example.com\r\nConnection: close\r\n\
         User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n\
         Accept: text/html\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    let _ = s
        .write_all(head.as_bytes())
        .and_then(|()| s.write_all(body));
    read_response(&mut s).ok().map(|r| r.status)
}

/// The status Envoy logged for `path`: what the client got, even when it
/// could not read it.
fn logged_status(lab: &Lab, path: &str) -> u64 {
    let mut found = 0;
    poll_until("the request is logged", Duration::from_secs(10), || {
        let entries = lab.access_entries();
        found = entries
            .iter()
            .find(|v| v["path"] == path)
            .and_then(|v| v["status"].as_u64())
            .ok_or_else(|| format!("{entries:?}"))?;
        Ok::<(), String>(())
    });
    found
}

/// A form padded past what the WAF parses (128 KiB), or past what Envoy
/// holds for it (2 MiB), passed in `block` with only its start inspected,
/// so an attack after the padding was never seen. Now it is refused (413)
/// unless the load balancer chose `oversize_body: inspect_start`.
fn regression_a_body_padded_past_the_limit_passed_uninspected(via: Via, engine: Engine) {
    let (refuse, start_only) = (free_port(), free_port());
    let bs = backends(&["a"]);
    let mut one = with_waf(refuse, &bs, json!({"mode": "block"}));
    one["id"] = json!("refuse");
    let mut two = with_waf(
        start_only,
        &bs,
        json!({"mode": "block", "oversize_body": "inspect_start"}),
    );
    two["id"] = json!("start");
    let (lab, waf) = start_on(via, engine, &json!([one, two]));
    for port in [refuse, start_only] {
        poll_until("served", Duration::from_secs(30), || {
            match send(port, "GET", "/", &[], b"").status {
                200 => Ok(()),
                s => Err(format!("status {s}")),
            }
        });
    }
    let form = |pad: usize| format!("pad={}&q=1'%20OR%20'1'='1", "a".repeat(pad)).into_bytes();
    const FORM: &str = "application/x-www-form-urlencoded";
    // A file is not parsed into arguments, so only the whole-body limit
    // applies; and this one is past what Envoy itself would buffer (2 MiB
    // and 32 KiB), so only the WAF's own handling passes it with
    // `inspect_start`.
    let mut upload = b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n".to_vec();
    upload.extend((0..3 * 1024 * 1024).map(|i| (i % 251) as u8));
    upload.extend_from_slice(b"\r\n--b--\r\n");
    // (what, content type, body, status with refuse, with inspect_start)
    let cases = [
        ("an attack in a short form", FORM, form(1024), 403, 403),
        (
            "past the parsed-body limit",
            FORM,
            form(200 * 1024),
            413,
            200,
        ),
        (
            "past what envoy holds",
            FORM,
            form(2 * 1024 * 1024 + 1),
            413,
            200,
        ),
        (
            "a 3 MiB upload",
            "multipart/form-data; boundary=b",
            upload,
            413,
            200,
        ),
    ];
    for (i, (what, content_type, body, want_refuse, want_start)) in cases.into_iter().enumerate() {
        // A path of its own per request, to find it in the access log.
        let status = |port: u16, path: String| {
            post(port, &path, content_type, &body)
                .map_or_else(|| logged_status(&lab, &path), u64::from)
        };
        let refused = status(refuse, format!("/refuse/{i}"));
        let started = status(start_only, format!("/start/{i}"));
        assert_eq!(
            (refused, started),
            (want_refuse, want_start),
            "{what}: {}\n{}",
            std::fs::read_to_string(lab.access_log()).unwrap_or_default(),
            waf.log()
        );
    }
}

over_deliveries_and_engines!(
    regression_a_body_padded_past_the_limit_passed_uninspected,
    regression_http_2_and_3_uploads_failed_on_a_waf_load_balancer,
);
