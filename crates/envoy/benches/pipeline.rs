//! Microbenchmarks of the pure stages, so regressions show up:
//! `cargo bench -p vpsie-lb-envoy`. Documents have N load balancers with 10
//! backends and an HTTP health check each, the shape of issue 5's scale runs.

use divan::Bencher;
use serde_json::{Value, json};
use vpsie_lb_envoy::{Delivery, FilesLayout, TranslateOptions, render_files, translate};
use vpsie_lb_model::{ValidateOptions, validate};

fn main() {
    divan::main();
}

fn document(n: usize) -> Value {
    document_of(n, 10)
}

/// `n` load balancers of `per_lb` backends each.
fn document_of(n: usize, per_lb: usize) -> Value {
    let lbs: Vec<Value> = (0..n)
        .map(|i| {
            let backends: Vec<Value> = (0..per_lb)
                .map(|j| json!({"id": format!("b{j}"), "address": format!("10.{}.{}.{}", i / 250, i % 250, j % 250 + 1), "port": 8080 + j / 250}))
                .collect();
            json!({
                "id": format!("lb{i}"), "name": format!("lb {i}"), "protocol": "http",
                "port": 10_000 + i, "algorithm": "round_robin", "backends": backends,
                "health_check": {"type": "http", "path": "/healthz", "interval": 5, "timeout": 2,
                                 "healthy_threshold": 2, "unhealthy_threshold": 3},
            })
        })
        .collect();
    Value::Array(lbs)
}

fn options() -> TranslateOptions {
    TranslateOptions::new(Delivery::Files(FilesLayout::new("/etc/envoy")))
}

#[divan::bench(args = [1, 100, 1000])]
fn validate_document(bencher: Bencher, n: usize) {
    let doc = document(n);
    bencher.bench(|| {
        validate(divan::black_box(&doc), &ValidateOptions::default())
            .map(|v| v.config.load_balancers.len())
    });
}

#[divan::bench(args = [1, 100, 1000])]
fn translate_config(bencher: Bencher, n: usize) {
    let config = validate(&document(n), &ValidateOptions::default())
        .expect("valid")
        .config;
    let opts = options();
    bencher.bench(|| translate(divan::black_box(&config), &opts).listeners.len());
}

#[divan::bench(args = [1, 100, 1000])]
fn render_dynamic_files(bencher: Bencher, n: usize) {
    let config = validate(&document(n), &ValidateOptions::default())
        .expect("valid")
        .config;
    let opts = options();
    let layout = FilesLayout::new("/etc/envoy");
    let resources = translate(&config, &opts);
    bencher.bench(|| render_files(divan::black_box(&resources), &layout).map(|f| f.len()));
}

/// One load balancer with 10,000 backends: the other shape of the scale runs.
#[divan::bench]
fn ten_thousand_backends(bencher: Bencher) {
    let doc = document_of(1, 10_000);
    let opts = options();
    let layout = FilesLayout::new("/etc/envoy");
    bencher.bench(|| {
        let config = validate(divan::black_box(&doc), &ValidateOptions::default())
            .expect("valid")
            .config;
        let resources = translate(&config, &opts);
        render_files(&resources, &layout).map(|f| f.len())
    });
}
