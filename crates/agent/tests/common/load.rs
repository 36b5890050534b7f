//! Steady requests to one port while a test changes what serves it.

use std::time::Duration;

use vpsie_lb_testkit::poll_until;

/// Requests to one port in a loop until stopped, counting what failed.
/// Bounded: it stops by itself after 5 minutes.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    answered: std::sync::Arc<std::sync::atomic::AtomicU64>,
    thread: std::thread::JoinHandle<(u64, Vec<String>)>,
}

impl Load {
    /// Starts requesting `GET /` on `port`.
    pub fn start(port: u16) -> Load {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let answered = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let count = answered.clone();
        let thread = std::thread::spawn(move || {
            let (mut ok, mut failed) = (0u64, Vec::new());
            let deadline = std::time::Instant::now() + Duration::from_secs(300);
            while !flag.load(std::sync::atomic::Ordering::SeqCst)
                && std::time::Instant::now() < deadline
            {
                match vpsie_lb_testkit::http::get(port, "/") {
                    Ok(r) if r.status == 200 => {
                        ok += 1;
                        count.store(ok, std::sync::atomic::Ordering::SeqCst);
                    }
                    other => failed.push(format!("{:?}", other.map(|r| r.status))),
                }
            }
            (ok, failed)
        });
        Load {
            stop,
            answered,
            thread,
        }
    }

    /// Waits until `n` more requests were answered 200 than now.
    pub fn wait_for_more(&self, n: u64) {
        let want = self.answered.load(std::sync::atomic::Ordering::SeqCst) + n;
        poll_until(
            &format!("{n} more requests answered"),
            Duration::from_secs(60),
            || {
                let now = self.answered.load(std::sync::atomic::Ordering::SeqCst);
                if now >= want {
                    Ok(())
                } else {
                    Err(format!("{now} of {want}"))
                }
            },
        );
    }

    /// Stops and returns (requests answered 200, what the others got).
    pub fn stop(self) -> (u64, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.join().expect("load thread")
    }
}
