//! Password hashing (argon2id) on a small pool of threads, shared fairly between clients.
//!
//! Each hash takes ~19 MiB and a core for tens of milliseconds, so a node runs a fixed number
//! of hashing threads (`FANOUT_PASSWORD_HASH_THREADS`) fed by a bounded queue
//! (`FANOUT_PASSWORD_HASH_QUEUE`). A fixed pool instead of tokio's blocking pool (up to 512
//! threads) bounds both CPU and memory: the allocator keeps per-thread arenas, so the thread
//! count is what resident memory pays for logins.
//!
//! Fairness: one client address (IPv6 by /64) may have at most `FANOUT_PASSWORD_HASH_PER_IP`
//! jobs queued or running; more are refused at once ([`HashError::SourceBusy`]), so a flood
//! from one address occupies a few slots of the queue instead of all of it, and a login from
//! elsewhere waits behind at most that many of its jobs. A job whose requester went away
//! before a thread took it is skipped.
//!
//! Unknown accounts: [`HashPool::verify`] with no stored hash checks the password against a
//! dummy hash made once at startup with the same parameters, so "no such user" costs the same
//! time as "wrong password" and login timing does not reveal which usernames exist.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use rand::RngCore;

use super::throttle::source_key;
use crate::error::{AppError, Code};
use crate::metrics::Metrics;

/// Sizes of the hashing pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashSettings {
    /// Hashing threads.
    pub threads: usize,
    /// Jobs waiting for a thread, all clients together.
    pub queue: usize,
    /// Jobs one client address may have queued or running.
    pub per_source: usize,
}

/// Why a password could not be hashed or checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashError {
    /// This client address has `per_source` jobs in the pool already.
    SourceBusy,
    /// The whole queue is full.
    QueueFull,
    /// Hashing failed (a bug, or a stored hash that does not parse).
    Failed(AppError),
}

type HashJob = Box<dyn FnOnce() + Send>;

/// Jobs in the pool per client address.
type SourceCounts = Arc<Mutex<HashMap<IpAddr, usize>>>;

fn lock(counts: &SourceCounts) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
    counts.lock().unwrap_or_else(|p| p.into_inner())
}

/// A client's place in the pool, released when its job ran or was dropped.
struct Slot {
    counts: SourceCounts,
    source: IpAddr,
    metrics: Metrics,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = lock(&self.counts);
        if let Some(count) = counts.get_mut(&self.source) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.source);
            }
        }
        self.metrics.password_hash_job(false);
    }
}

/// The hashing threads and their queue; dropping the pool stops the threads.
pub struct HashPool {
    jobs: Option<std::sync::mpsc::SyncSender<HashJob>>,
    counts: SourceCounts,
    per_source: usize,
    dummy: Arc<OnceLock<Option<String>>>,
    metrics: Metrics,
    /// At most one "queue full" warning every 10 s: clients can trigger it.
    full_log: governor::DefaultDirectRateLimiter,
}

impl HashPool {
    /// Starts `settings.threads` hashing threads and has one of them make the dummy hash.
    pub fn new(settings: HashSettings, metrics: Metrics) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel::<HashJob>(settings.queue.max(1));
        let rx = Arc::new(Mutex::new(rx));
        let mut started = 0;
        for i in 0..settings.threads.max(1) {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || {
                    loop {
                        // The lock is held only while waiting for a job, not while hashing.
                        let job = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                });
            match spawned {
                Ok(_) => started += 1,
                Err(err) => tracing::error!(%err, "cannot start a password hashing thread"),
            }
        }
        let dummy = Arc::new(OnceLock::new());
        let jobs = (started > 0).then_some(tx);
        if let Some(jobs) = &jobs {
            let dummy = dummy.clone();
            // At startup the queue is empty: this cannot fail. If it did, the first unknown
            // login would make the dummy hash itself.
            let _ = jobs.try_send(Box::new(move || {
                dummy.get_or_init(make_dummy);
            }));
        }
        Self {
            jobs,
            counts: SourceCounts::default(),
            per_source: settings.per_source.max(1),
            dummy,
            metrics,
            full_log: governor::RateLimiter::direct(governor::Quota::per_minute(
                std::num::NonZeroU32::new(6).unwrap_or(std::num::NonZeroU32::MIN),
            )),
        }
    }

    /// Runs `job` on a hashing thread for a client at `source`.
    async fn run<T: Send + 'static>(
        &self,
        source: IpAddr,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HashError> {
        let Some(jobs) = &self.jobs else {
            return Err(HashError::Failed(internal(
                "password hashing",
                "no hashing thread could be started",
            )));
        };
        let source = source_key(source);
        let slot = {
            let mut counts = lock(&self.counts);
            let count = counts.entry(source).or_insert(0);
            if *count >= self.per_source {
                return Err(HashError::SourceBusy);
            }
            *count += 1;
            self.metrics.password_hash_job(true);
            Slot {
                counts: self.counts.clone(),
                source,
                metrics: self.metrics.clone(),
            }
        };
        let (done, result) = tokio::sync::oneshot::channel();
        let job: HashJob = Box::new(move || {
            // The requester went away (client disconnected): nothing to compute for.
            if done.is_closed() {
                return;
            }
            let result = job();
            // Free the place before answering, so the requester never sees its own job counted.
            drop(slot);
            done.send(result).ok();
        });
        // A refused job is dropped here, and its slot with it.
        if jobs.try_send(job).is_err() {
            if self.full_log.check().is_ok() {
                tracing::warn!("password hashing queue full: logins and signups refused (503)");
            }
            return Err(HashError::QueueFull);
        }
        result
            .await
            .map_err(|err| HashError::Failed(internal("password hashing thread", err)))
    }

    /// Hashes a password with argon2id (default parameters, random salt).
    pub async fn hash(&self, source: IpAddr, password: String) -> Result<String, HashError> {
        self.run(source, move || hash_now(&password))
            .await?
            .map_err(|err| HashError::Failed(internal("password hashing failed", err)))
    }

    /// Checks a password against a stored argon2 PHC string, or, with `None` (no such
    /// account), against the dummy hash — same work, always `false`.
    pub async fn verify(
        &self,
        source: IpAddr,
        password: String,
        stored: Option<String>,
    ) -> Result<bool, HashError> {
        let dummy = self.dummy.clone();
        self.run(source, move || match stored {
            Some(phc) => verify_now(&password, &phc),
            None => match dummy.get_or_init(make_dummy) {
                Some(phc) => verify_now(&password, phc).map(|_| false),
                None => Err("no dummy password hash"),
            },
        })
        .await?
        .map_err(|err| HashError::Failed(internal("password check failed", err)))
    }
}

fn hash_now(password: &str) -> Result<String, argon2::password_hash::Error> {
    let mut salt_bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut salt_bytes);
    let salt = SaltString::encode_b64(&salt_bytes)?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
}

fn verify_now(password: &str, phc: &str) -> Result<bool, &'static str> {
    let parsed = PasswordHash::new(phc).map_err(|_| "stored password hash does not parse")?;
    Ok(Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok())
}

/// The hash of a random password nobody knows, with the parameters real hashes use.
fn make_dummy() -> Option<String> {
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    match hash_now(&hex::encode(secret)) {
        Ok(phc) => Some(phc),
        Err(err) => {
            tracing::error!(%err, "cannot make the dummy password hash");
            None
        }
    }
}

fn internal(what: &str, err: impl std::fmt::Display) -> AppError {
    tracing::error!(%err, "{what}");
    AppError::new(Code::Internal, "internal error")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use std::time::{Duration, Instant};

    fn pool(threads: usize, queue: usize, per_source: usize) -> HashPool {
        HashPool::new(
            HashSettings {
                threads,
                queue,
                per_source,
            },
            Metrics::new("test"),
        )
    }

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));

    #[tokio::test]
    async fn hash_and_verify() {
        let pool = pool(1, 8, 8);
        let phc = pool.hash(A, "s3cret".into()).await.unwrap();
        assert!(phc.starts_with("$argon2id$"));
        assert!(
            pool.verify(A, "s3cret".into(), Some(phc.clone()))
                .await
                .unwrap()
        );
        assert!(!pool.verify(A, "nope".into(), Some(phc)).await.unwrap());
        assert!(!pool.verify(A, "s3cret".into(), None).await.unwrap());
        assert!(matches!(
            pool.verify(A, "x".into(), Some("garbage".into())).await,
            Err(HashError::Failed(_))
        ));
    }

    #[tokio::test]
    async fn unknown_account_costs_a_real_verification() {
        let pool = pool(1, 8, 8);
        let phc = pool.hash(A, "s3cret".into()).await.unwrap();
        // Warm both paths (the dummy hash is made at startup).
        pool.verify(A, "x".into(), None).await.unwrap();
        // Interleaved, so that load from other tests hits both sides alike; medians.
        let (mut known, mut unknown) = (Vec::new(), Vec::new());
        for _ in 0..9 {
            for (stored, times) in [(Some(phc.clone()), &mut known), (None, &mut unknown)] {
                let start = Instant::now();
                pool.verify(A, "wrong".into(), stored).await.unwrap();
                times.push(start.elapsed());
            }
        }
        known.sort();
        unknown.sort();
        let ratio = unknown[4].as_secs_f64() / known[4].as_secs_f64();
        assert!(
            (0.5..2.0).contains(&ratio),
            "known {known:?}, unknown {unknown:?}"
        );
    }

    #[tokio::test]
    async fn one_source_cannot_fill_the_queue() {
        let pool = Arc::new(pool(1, 64, 2));
        pool.verify(B, "x".into(), None).await.unwrap(); // the dummy hash is made
        // Occupy the only thread so jobs stay queued.
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let blocker = {
            let pool = pool.clone();
            tokio::spawn(async move {
                pool.run(B, move || {
                    hold.recv().ok();
                })
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let queued: Vec<_> = (0..2)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move { pool.run(A, || 1).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(pool.run(A, || 1).await, Err(HashError::SourceBusy));
        // Another address still gets in (B has one job running, its limit is 2).
        let other = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.run(B, || 2).await })
        };
        release.send(()).ok();
        assert_eq!(blocker.await.unwrap(), Ok(()));
        for job in queued {
            assert_eq!(job.await.unwrap(), Ok(1));
        }
        assert_eq!(other.await.unwrap(), Ok(2));
        // Every slot was released.
        assert!(lock(&pool.counts).is_empty());
        assert_eq!(pool.run(A, || 3).await, Ok(3));
    }

    #[tokio::test]
    async fn full_queue_is_refused_and_releases_the_slot() {
        let pool = Arc::new(pool(1, 1, 8));
        // Wait until the startup job (the dummy hash) has left the one-place queue.
        while pool.verify(B, "x".into(), None).await.is_err() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let blocker = {
            let pool = pool.clone();
            tokio::spawn(async move {
                pool.run(B, move || {
                    hold.recv().ok();
                })
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let queued = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.run(A, || 1).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(pool.run(A, || 1).await, Err(HashError::QueueFull));
        assert_eq!(
            lock(&pool.counts).get(&A),
            Some(&1),
            "the refused job holds no slot"
        );
        release.send(()).ok();
        blocker.await.unwrap().unwrap();
        assert_eq!(queued.await.unwrap(), Ok(1));
    }
}
