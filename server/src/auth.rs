//! Password hashing and verification with argon2id (PHC strings), constant-time, and with a
//! dummy verification for unknown users so that timing does not reveal which names exist.
//! Verifications run on a small fixed pool of threads: argon2id needs ~19 MiB per hash, and
//! a bounded pool bounds both that memory and the CPU a flood of logins can take.
//!
//! Each pool thread owns its argon2 working memory and reuses it for every verification.
//! Allocating it per verification (as `PasswordVerifier` does) made glibc keep up to three
//! freed 19 MiB blocks per arena heap, fragmented by small allocations in between: measured
//! ~57 MiB per heap and four such heaps after a few dozen logins, ~150 MiB that were
//! counted against idle sessions. With the memory owned by the thread, the pool costs
//! exactly `workers x m_cost` KiB, allocated once at start.
//!
//! The pool threads run at a lower scheduling priority (`VERIFIER_NICE`): a tenant that logs
//! in as fast as it can (many sessions, several addresses) otherwise keeps every core busy with
//! argon2 and takes CPU from the transfers of every other tenant. Niced, the verifications use
//! any idle CPU at full speed and yield to transfer work when the cores are contended; logins
//! get slower under load, transfers do not.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use argon2::password_hash::{Output, PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use sluice_config::Argon2Params;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("password hash is not a valid argon2id PHC string: {0}")]
    BadHash(String),
    #[error("hashing failed: {0}")]
    Hashing(String),
}

/// Hashes a password with argon2id and the library's recommended parameters.
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| AuthError::Hashing(e.to_string()))
}

/// Checks that a stored hash is a parseable argon2id PHC string.
pub fn check_hash(hash: &str) -> Result<(), AuthError> {
    let parsed = PasswordHash::new(hash).map_err(|e| AuthError::BadHash(e.to_string()))?;
    if parsed.algorithm != Algorithm::Argon2id.ident() {
        return Err(AuthError::BadHash(format!(
            "algorithm {} is not argon2id",
            parsed.algorithm
        )));
    }
    Ok(())
}

fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| hash_password("sluice-dummy-password").unwrap_or_default())
}

/// The argon2 parameters most of `hashes` use (ties: the costlier), or those we issue when
/// there are none. Unknown users are verified with these, so that they cost what a real user
/// costs: with the library's defaults, a user whose hash has other parameters was told apart
/// from an unknown name by timing.
pub fn typical_params<'a>(hashes: impl Iterator<Item = &'a str>) -> Argon2Params {
    let mut counts: std::collections::HashMap<Argon2Params, usize> =
        std::collections::HashMap::new();
    for hash in hashes {
        if let Some(Ok(params)) = sluice_config::argon2_params_of(hash) {
            *counts.entry(params).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .max_by_key(|(params, count)| {
            (
                *count,
                u64::from(params.memory_kib) * u64::from(params.iterations),
                *params,
            )
        })
        .map(|(params, _)| params)
        .unwrap_or(Argon2Params::ISSUED)
}

/// A dummy hash with `params`, made once per parameter set.
pub fn dummy_hash_for(params: Argon2Params) -> Arc<str> {
    static DUMMIES: OnceLock<Mutex<std::collections::HashMap<Argon2Params, Arc<str>>>> =
        OnceLock::new();
    let mut dummies = DUMMIES
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    dummies
        .entry(params)
        .or_insert_with(|| {
            let salt = SaltString::generate(&mut rand::rngs::OsRng);
            Params::new(
                params.memory_kib,
                params.iterations,
                params.parallelism,
                None,
            )
            .ok()
            .and_then(|argon| {
                Argon2::new(Algorithm::Argon2id, Version::V0x13, argon)
                    .hash_password(b"sluice-dummy-password", &salt)
                    .ok()
            })
            .map(|hash| hash.to_string())
            .unwrap_or_else(|| dummy_hash().to_string())
            .into()
        })
        .clone()
}

/// Verifies `password` against `hash`; with no hash (unknown user, or no password set) a dummy
/// hash is verified instead and the result is always false. Blocking (~tens of ms): call it
/// from the blocking pool.
#[cfg(test)]
pub fn verify(password: &str, hash: Option<&str>) -> bool {
    verify_with_memory(password, hash, &mut Vec::new())
}

/// [`verify`] with caller-owned argon2 working memory: grown to the hash's `m` (KiB) when
/// smaller and then kept, so a pool thread allocates it once instead of once per login.
/// Same semantics as argon2's `PasswordVerifier` (algorithm, version and parameters from the
/// PHC string, constant-time comparison of the output).
pub fn verify_with_memory(password: &str, hash: Option<&str>, memory: &mut Vec<Block>) -> bool {
    verify_or_dummy(password, hash, dummy_hash(), memory)
}

/// [`verify_with_memory`] with the dummy hash to use when `hash` is `None`.
pub fn verify_or_dummy(
    password: &str,
    hash: Option<&str>,
    dummy: &str,
    memory: &mut Vec<Block>,
) -> bool {
    let (hash, real) = match hash {
        Some(hash) => (hash, true),
        None => (dummy, false),
    };
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    matches_phc(password.as_bytes(), &parsed, memory) && real
}

fn matches_phc(password: &[u8], parsed: &PasswordHash<'_>, memory: &mut Vec<Block>) -> bool {
    let (Some(salt), Some(expected)) = (&parsed.salt, &parsed.hash) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(parsed.algorithm) else {
        return false;
    };
    let version = match parsed.version.map(Version::try_from).transpose() {
        Ok(version) => version.unwrap_or_default(),
        Err(_) => return false,
    };
    let Ok(params) = Params::try_from(parsed) else {
        return false;
    };
    // users.yaml loading refuses hashes over the caps; checked again here because argon2
    // sizes its memory from the hash (m=4294967295 maps 4 TiB).
    let capped = sluice_config::Argon2Params {
        memory_kib: params.m_cost(),
        iterations: params.t_cost(),
        parallelism: params.p_cost(),
    };
    if sluice_config::Argon2Params::parse_capped(&format!(
        "m={},t={},p={}",
        capped.memory_kib, capped.iterations, capped.parallelism
    ))
    .is_err()
    {
        return false;
    }
    let mut salt_bytes = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_bytes) else {
        return false;
    };
    let blocks = params.block_count();
    if memory.len() < blocks {
        memory.resize(blocks, Block::default());
    }
    let mut computed = [0u8; Output::MAX_LENGTH];
    let Some(computed) = computed.get_mut(..expected.len()) else {
        return false;
    };
    if Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password, salt, computed, &mut memory[..blocks])
        .is_err()
    {
        return false;
    }
    // `Output`'s equality is constant-time.
    Output::new(computed).is_ok_and(|computed| computed == *expected)
}

struct Job {
    password: String,
    hash: Option<String>,
    /// Verified instead of `hash` when there is none (the result is then always false).
    dummy: Arc<str>,
    reply: tokio::sync::oneshot::Sender<bool>,
}

/// Jobs waiting for a verification thread, one queue per source: threads take the sources in
/// turn, so a client that floods logins (from one address or /64) waits behind its own
/// verifications while a login from anyone else is next in line.
#[derive(Default)]
struct FairQueue {
    waiting: HashMap<IpAddr, VecDeque<Job>>,
    /// Sources with waiting jobs, in the order they are served.
    turns: VecDeque<IpAddr>,
}

impl FairQueue {
    fn push(&mut self, source: IpAddr, job: Job) {
        let queue = self.waiting.entry(source).or_default();
        if queue.is_empty() {
            self.turns.push_back(source);
        }
        queue.push_back(job);
    }

    fn pop(&mut self) -> Option<Job> {
        let source = self.turns.pop_front()?;
        let queue = self.waiting.get_mut(&source)?;
        let job = queue.pop_front();
        if queue.is_empty() {
            self.waiting.remove(&source);
        } else {
            self.turns.push_back(source);
        }
        job
    }
}

struct Shared {
    queue: Mutex<FairQueue>,
    ready: Condvar,
}

/// How much lower than the rest of the server the verification threads are scheduled
/// (`nice` +10: about a tenth of a contended core's share, per Linux's CFS weights).
const VERIFIER_NICE: i32 = 10;

/// Lowers the calling thread's scheduling priority (Linux: each thread has its own nice
/// value). Failing to is not fatal: verifications then compete with transfers as equals.
fn lower_this_threads_priority() {
    let thread = rustix::thread::gettid();
    if let Err(error) = rustix::process::setpriority_process(Some(thread), VERIFIER_NICE) {
        tracing::debug!(%error, "could not lower the priority of an argon2 thread");
    }
}

/// A fixed pool of verification threads.
#[derive(Clone)]
pub struct Verifier {
    shared: Arc<Shared>,
}

impl Verifier {
    pub fn start(workers: usize) -> Verifier {
        let shared = Arc::new(Shared {
            queue: Mutex::new(FairQueue::default()),
            ready: Condvar::new(),
        });
        for index in 0..workers.max(1) {
            let shared = shared.clone();
            let _ = std::thread::Builder::new()
                .name(format!("argon2-{index}"))
                .spawn(move || {
                    lower_this_threads_priority();
                    // This thread's argon2 working memory, allocated (and touched) once here
                    // and reused by every verification: memory is a constant of the process,
                    // not of the logins.
                    let mut memory = Vec::new();
                    let _ = verify_with_memory("warm-up", None, &mut memory);
                    loop {
                        let job = {
                            let Ok(mut queue) = shared.queue.lock() else {
                                return;
                            };
                            loop {
                                if let Some(job) = queue.pop() {
                                    break job;
                                }
                                queue = match shared.ready.wait(queue) {
                                    Ok(queue) => queue,
                                    Err(_) => return,
                                };
                            }
                        };
                        let ok = verify_or_dummy(
                            &job.password,
                            job.hash.as_deref(),
                            &job.dummy,
                            &mut memory,
                        );
                        let _ = job.reply.send(ok);
                    }
                });
        }
        Verifier { shared }
    }

    /// Verifies on the pool against `hash`, or against `dummy` (always false) when there is
    /// none; false on any failure. `source` is the client's address (or IPv6 prefix) that the
    /// pool's turns are shared by.
    pub async fn verify(
        &self,
        source: IpAddr,
        password: String,
        hash: Option<String>,
        dummy: Arc<str>,
    ) -> bool {
        let (reply, answer) = tokio::sync::oneshot::channel();
        {
            let Ok(mut queue) = self.shared.queue.lock() else {
                return false;
            };
            queue.push(
                source,
                Job {
                    password,
                    hash,
                    dummy,
                    reply,
                },
            );
        }
        self.shared.ready.notify_one();
        answer.await.unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejections() {
        let hash = hash_password("correct horse battery").unwrap();
        assert!(hash.starts_with("$argon2id$v=19$"));
        check_hash(&hash).unwrap();
        assert!(verify("correct horse battery", Some(&hash)));
        assert!(!verify("wrong", Some(&hash)));
        assert!(!verify("sluice-dummy-password", None));
        assert!(check_hash("$argon2i$v=19$m=16,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo").is_err());
        assert!(check_hash("plaintext").is_err());
    }

    #[test]
    fn reused_memory_agrees_with_the_library_verifier() {
        use argon2::password_hash::PasswordVerifier;
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        let mut hashes = vec![hash_password("pw").unwrap()];
        for (algorithm, version, m, t, p, len) in [
            (Algorithm::Argon2id, Version::V0x13, 64, 1, 1, 32),
            (Algorithm::Argon2id, Version::V0x13, 256, 3, 2, 16),
            (Algorithm::Argon2i, Version::V0x13, 32, 2, 1, 64),
            (Algorithm::Argon2d, Version::V0x10, 128, 1, 4, 24),
        ] {
            let params = Params::new(m, t, p, Some(len)).unwrap();
            let hasher = Argon2::new(algorithm, version, params);
            hashes.push(hasher.hash_password(b"pw", &salt).unwrap().to_string());
        }
        // One buffer across all of them, larger and smaller `m` in turn.
        let mut memory = Vec::new();
        for hash in &hashes {
            let parsed = PasswordHash::new(hash).unwrap();
            for password in ["pw", "pW", "", "pw\0"] {
                let library = Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok();
                let ours = verify_with_memory(password, Some(hash), &mut memory);
                assert_eq!(ours, library, "{hash} {password:?}");
                assert_eq!(ours, password == "pw", "{hash} {password:?}");
            }
        }
        assert_eq!(memory.len(), Params::DEFAULT_M_COST as usize);
        // Tampered output or salt, missing output, garbage: rejected.
        let good = &hashes[1];
        let (head, output) = good.rsplit_once('$').unwrap();
        let flipped = if output.starts_with('A') { "B" } else { "A" };
        let tampered = format!("{head}${flipped}{}", &output[1..]);
        assert!(!verify_with_memory("pw", Some(&tampered), &mut memory));
        assert!(!verify_with_memory("pw", Some(head), &mut memory));
        assert!(!verify_with_memory(
            "pw",
            Some("$argon2id$v=19$m=64"),
            &mut memory
        ));
        assert!(!verify_with_memory("pw", Some("plaintext"), &mut memory));
    }

    /// The nice value of every thread of this process with that name (field 19 of
    /// /proc/self/task/<tid>/stat, after the parenthesised command).
    fn nice_of_threads_named(name: &str) -> Vec<i32> {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|task| {
                let path = task.ok()?.path();
                let comm = std::fs::read_to_string(path.join("comm")).ok()?;
                if comm.trim() != name {
                    return None;
                }
                let stat = std::fs::read_to_string(path.join("stat")).ok()?;
                let after_comm = stat.rsplit_once(')')?.1;
                after_comm.split_whitespace().nth(16)?.parse().ok()
            })
            .collect()
    }

    #[tokio::test]
    async fn verification_threads_yield_to_transfers() {
        let pool = Verifier::start(1);
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        let dummy = dummy_hash_for(Argon2Params::ISSUED);
        // One verification: the thread has started (and set its priority) by its answer.
        assert!(!pool.verify(ip, "x".into(), None, dummy).await);
        let nice = nice_of_threads_named("argon2-0");
        assert!(!nice.is_empty(), "no argon2-0 thread found");
        assert!(nice.iter().all(|&n| n == VERIFIER_NICE), "{nice:?}");
    }

    #[tokio::test]
    async fn pool_verifies() {
        let hash = hash_password("correct horse battery").unwrap();
        let pool = Verifier::start(2);
        let dummy = dummy_hash_for(Argon2Params::ISSUED);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let check = |password: &str, hash: Option<String>| {
            pool.verify(ip, password.into(), hash, dummy.clone())
        };
        assert!(check("correct horse battery", Some(hash.clone())).await);
        assert!(!check("nope", Some(hash)).await);
        assert!(!check("x", None).await);
        assert!(!check("sluice-dummy-password", None).await);
    }

    /// A flood of logins from one source does not delay another source's login behind it:
    /// the sources take turns.
    #[test]
    fn sources_take_turns_in_the_queue() {
        let job = || {
            let (reply, _answer) = tokio::sync::oneshot::channel();
            Job {
                password: String::new(),
                hash: None,
                dummy: Arc::from(""),
                reply,
            }
        };
        let (mallory, victim): (IpAddr, IpAddr) =
            ("127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap());
        let mut queue = FairQueue::default();
        for _ in 0..100 {
            queue.push(mallory, job());
        }
        queue.push(victim, job());
        let mut served = Vec::new();
        for _ in 0..3 {
            served.push(queue.turns.front().copied());
            queue.pop().unwrap();
        }
        assert_eq!(served, vec![Some(mallory), Some(victim), Some(mallory)]);
        let mut left = 0;
        while queue.pop().is_some() {
            left += 1;
        }
        assert_eq!(left, 98);
        assert!(queue.waiting.is_empty() && queue.turns.is_empty());
    }

    /// Found in review: a stored hash sizes argon2's memory; m=4294967295 mapped 4 TiB on the
    /// first failed login. Refused at verification too (loading refuses it first).
    #[test]
    fn hashes_over_the_caps_are_never_computed() {
        let hostile =
            "$argon2id$v=19$m=4294967295,t=1,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2g";
        let mut memory = Vec::new();
        assert!(!verify_with_memory("x", Some(hostile), &mut memory));
        assert!(memory.len() <= 65_536, "allocated {} blocks", memory.len());
        let slow =
            "$argon2id$v=19$m=19456,t=4294967295,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2g";
        let started = std::time::Instant::now();
        assert!(!verify_with_memory("x", Some(slow), &mut memory));
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    /// Unknown users are verified with the parameters real users have, so they cost the same.
    #[test]
    fn the_dummy_hash_follows_the_users_parameters() {
        let hashes = [
            "$argon2id$v=19$m=47104,t=1,p=1$c2FsdA$aGFzaA",
            "$argon2id$v=19$m=47104,t=1,p=1$c2FsdA$aGFzaA",
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA",
        ];
        let typical = typical_params(hashes.into_iter());
        assert_eq!(typical.memory_kib, 47104);
        assert_eq!(typical.iterations, 1);
        assert_eq!(typical_params(std::iter::empty()), Argon2Params::ISSUED);
        let dummy = dummy_hash_for(typical);
        assert!(dummy.contains("m=47104,t=1,p=1"), "{dummy}");
        assert!(Arc::ptr_eq(&dummy, &dummy_hash_for(typical)));
    }
}
