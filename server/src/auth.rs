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

use std::sync::{Arc, Mutex, OnceLock, mpsc};

use argon2::password_hash::{Output, PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};

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
    let (hash, real) = match hash {
        Some(hash) => (hash, true),
        None => (dummy_hash(), false),
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
    reply: tokio::sync::oneshot::Sender<bool>,
}

/// A fixed pool of verification threads.
#[derive(Clone)]
pub struct Verifier {
    jobs: mpsc::Sender<Job>,
}

impl Verifier {
    pub fn start(workers: usize) -> Verifier {
        let (jobs, receiver) = mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        for index in 0..workers.max(1) {
            let receiver = receiver.clone();
            let _ = std::thread::Builder::new()
                .name(format!("argon2-{index}"))
                .spawn(move || {
                    // This thread's argon2 working memory, allocated (and touched) once here
                    // and reused by every verification: memory is a constant of the process,
                    // not of the logins.
                    let mut memory = Vec::new();
                    let _ = verify_with_memory("warm-up", None, &mut memory);
                    loop {
                        let job = {
                            let Ok(guard) = receiver.lock() else { return };
                            match guard.recv() {
                                Ok(job) => job,
                                Err(_) => return,
                            }
                        };
                        let ok =
                            verify_with_memory(&job.password, job.hash.as_deref(), &mut memory);
                        let _ = job.reply.send(ok);
                    }
                });
        }
        Verifier { jobs }
    }

    /// Verifies on the pool; false on any failure.
    pub async fn verify(&self, password: String, hash: Option<String>) -> bool {
        let (reply, answer) = tokio::sync::oneshot::channel();
        if self
            .jobs
            .send(Job {
                password,
                hash,
                reply,
            })
            .is_err()
        {
            return false;
        }
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

    #[tokio::test]
    async fn pool_verifies() {
        let hash = hash_password("correct horse battery").unwrap();
        let pool = Verifier::start(2);
        assert!(
            pool.verify("correct horse battery".into(), Some(hash.clone()))
                .await
        );
        assert!(!pool.verify("nope".into(), Some(hash)).await);
        assert!(!pool.verify("x".into(), None).await);
    }
}
