//! A bound on inspections: a fixed number run at once, a bounded number
//! wait, and none waits longer than Envoy would. Past either bound a
//! request is turned away at once, so Envoy applies the load balancer's
//! `fail_open` within its timeout instead of waiting on a queue that only
//! grows (tokio's blocking pool would have run up to 512 at once).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

/// Why a request was not inspected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Busy {
    /// Every worker was busy and the queue full.
    Full,
    /// It waited its longest for a worker.
    Waited,
}

/// The workers and the queue in front of them.
#[derive(Clone)]
pub struct Pool {
    /// One permit per worker: held while a request is inspected.
    running: Arc<Semaphore>,
    /// One permit per worker or queue place: held from admission to the end.
    admitted: Arc<Semaphore>,
    /// Longest wait for a worker.
    wait: Duration,
}

impl Pool {
    /// `workers` inspections at once (at least one), `queue` more waiting,
    /// each waiting at most `wait`.
    pub fn new(workers: usize, queue: usize, wait: Duration) -> Self {
        let workers = workers.max(1);
        Self {
            running: Arc::new(Semaphore::new(workers)),
            admitted: Arc::new(Semaphore::new(workers + queue)),
            wait,
        }
    }

    /// Runs `f` on a blocking thread once a worker is free.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Busy> {
        let Ok(admitted) = self.admitted.clone().try_acquire_owned() else {
            return Err(Busy::Full);
        };
        let worker = tokio::time::timeout(self.wait, self.running.clone().acquire_owned())
            .await
            .map_err(|_| Busy::Waited)?
            .map_err(|_| Busy::Full)?;
        let done = tokio::task::spawn_blocking(move || {
            // Held until the inspection ends, even if the caller gave up.
            let _held = (admitted, worker);
            f()
        });
        done.await.map_err(|_| Busy::Full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[tokio::test]
    async fn past_the_workers_and_the_queue_a_request_is_turned_away() {
        let pool = Pool::new(1, 1, Duration::from_secs(30));
        let (release, hold) = mpsc::channel::<()>();
        let hold = Arc::new(std::sync::Mutex::new(hold));
        let blocker = {
            let (pool, hold) = (pool.clone(), hold.clone());
            tokio::spawn(async move {
                pool.run(move || {
                    let _ = hold.lock().expect("lock").recv();
                })
                .await
            })
        };
        // The first holds the worker; the second waits in the queue.
        while pool.running.available_permits() != 0 {
            tokio::task::yield_now().await;
        }
        let queued = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.run(|| 2).await })
        };
        while pool.admitted.available_permits() != 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(pool.run(|| 3).await, Err(Busy::Full));
        release.send(()).expect("release");
        assert_eq!(blocker.await.expect("join"), Ok(()));
        assert_eq!(queued.await.expect("join"), Ok(2));
        assert_eq!(pool.run(|| 4).await, Ok(4), "room again once they ended");
    }

    #[tokio::test]
    async fn a_request_waits_for_a_worker_no_longer_than_its_bound() {
        let pool = Pool::new(1, 8, Duration::from_millis(20));
        let (release, hold) = mpsc::channel::<()>();
        let blocker = {
            let pool = pool.clone();
            tokio::spawn(async move {
                pool.run(move || {
                    let _ = hold.recv();
                })
                .await
            })
        };
        while pool.running.available_permits() != 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(pool.run(|| 1).await, Err(Busy::Waited));
        release.send(()).expect("release");
        assert_eq!(blocker.await.expect("join"), Ok(()));
    }
}
