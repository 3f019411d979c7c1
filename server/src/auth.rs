//! Password hashing and verification with argon2id (PHC strings), constant-time, and with a
//! dummy verification for unknown users so that timing does not reveal which names exist.
//! Verifications run on a small fixed pool of threads: argon2id needs ~19 MiB per hash, and
//! a bounded pool bounds both that memory (the allocator keeps it per thread) and the CPU a
//! flood of logins can take.

use std::sync::{Arc, Mutex, OnceLock, mpsc};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2};

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
pub fn verify(password: &str, hash: Option<&str>) -> bool {
    let (hash, real) = match hash {
        Some(hash) => (hash, true),
        None => (dummy_hash(), false),
    };
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let ok = Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok();
    ok && real
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
                    // Touch argon2's working memory once at start: the allocator keeps it for
                    // this thread, so memory is a constant of the process, not of the logins.
                    let _ = verify("warm-up", None);
                    loop {
                        let job = {
                            let Ok(guard) = receiver.lock() else { return };
                            match guard.recv() {
                                Ok(job) => job,
                                Err(_) => return,
                            }
                        };
                        let ok = verify(&job.password, job.hash.as_deref());
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
