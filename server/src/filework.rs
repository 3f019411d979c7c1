//! Blocking file work under budgets (H20). Every blocking file operation of a user — a chunk
//! read or written, a stat, a listing batch — runs on tokio's blocking pool only while it has
//! work to do, and only after taking a slot of its user (`budgets.maxFileWorkPerUser`) and of
//! the process (`budgets.maxFileWork`). No open handle parks a thread, one user can never hold
//! more than its share of the pool, and the threads above `maxFileWork` stay free for reloads,
//! logins and health whatever users do. Waiting for a slot is an async wait (FIFO, tokio's
//! fair semaphore), not a thread.
//!
//! Written here rather than taken from a crate: the budget is two nested tokio semaphores and
//! one `spawn_blocking`; no crate offers per-key fair limits over tokio's blocking pool.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::Semaphore;

#[derive(Debug, thiserror::Error)]
pub enum WorkError {
    #[error("file work was cancelled: {0}")]
    Cancelled(String),
}

/// The process-wide budget and the per-user ones.
pub struct FileWork {
    global: Arc<Semaphore>,
    /// Permits `global` was created with or last resized to.
    global_size: Mutex<u32>,
    users: Mutex<HashMap<String, Weak<PerUser>>>,
}

/// What all sessions of one user share.
struct PerUser {
    slots: Semaphore,
    /// SFTP handles open over all the user's sessions (`budgets.maxOpenHandlesPerUser`).
    handles: AtomicUsize,
    /// Uploads of the user being scanned by clamd at once (as many as file-work slots): one
    /// user's uploads cannot take all of clamd's threads (`crate::scan`).
    scans: Semaphore,
}

/// One user's handle on the budget; cheap to clone, shared by all the user's sessions.
#[derive(Clone)]
pub struct UserWork {
    user: Arc<PerUser>,
    global: Arc<Semaphore>,
}

/// Which handle budget refused a new handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandleBudget {
    PerConnection(u32),
    PerUser(u32),
}

impl HandleBudget {
    pub fn name(self) -> &'static str {
        match self {
            HandleBudget::PerConnection(_) => "maxOpenHandlesPerConnection",
            HandleBudget::PerUser(_) => "maxOpenHandlesPerUser",
        }
    }

    pub fn limit(self) -> u32 {
        match self {
            HandleBudget::PerConnection(limit) | HandleBudget::PerUser(limit) => limit,
        }
    }
}

/// One open handle's place in its connection's and its user's count; freed on drop.
pub struct HandleSlot {
    user: Arc<PerUser>,
    connection: Arc<AtomicUsize>,
}

impl Drop for HandleSlot {
    fn drop(&mut self) {
        self.user.handles.fetch_sub(1, Ordering::AcqRel);
        self.connection.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Takes one slot of `counter` if it is below `limit`.
fn take_slot(counter: &AtomicUsize, limit: u32) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
            (now < limit as usize).then_some(now + 1)
        })
        .is_ok()
}

impl FileWork {
    pub fn new(max_file_work: u32) -> FileWork {
        FileWork {
            global: Arc::new(Semaphore::new(max_file_work as usize)),
            global_size: Mutex::new(max_file_work),
            users: Mutex::new(HashMap::new()),
        }
    }

    /// Follows a reloaded `budgets.maxFileWork`: grows at once, shrinks as slots come free.
    pub fn resize(&self, max_file_work: u32) {
        let mut size = self.global_size.lock().unwrap_or_else(|p| p.into_inner());
        if max_file_work > *size {
            self.global.add_permits((max_file_work - *size) as usize);
        } else if max_file_work < *size {
            let global = self.global.clone();
            let surplus = *size - max_file_work;
            tokio::spawn(async move {
                if let Ok(permits) = global.acquire_many(surplus).await {
                    permits.forget();
                }
            });
        }
        *size = max_file_work;
    }

    /// The budget of `username`: all sessions of one user share one semaphore of
    /// `per_user` slots (taken from the first session that logs in while none is open).
    pub fn for_user(&self, username: &str, per_user: u32) -> UserWork {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(user) = users.get(username).and_then(Weak::upgrade) {
            return UserWork {
                user,
                global: self.global.clone(),
            };
        }
        if users.len() >= 1024 {
            users.retain(|_, weak| weak.strong_count() > 0);
        }
        let user = Arc::new(PerUser {
            slots: Semaphore::new(per_user.max(1) as usize),
            handles: AtomicUsize::new(0),
            scans: Semaphore::new(per_user.max(1) as usize),
        });
        users.insert(username.to_string(), Arc::downgrade(&user));
        UserWork {
            user,
            global: self.global.clone(),
        }
    }

    /// Slots of the process budget free right now (for tests and metrics).
    pub fn available(&self) -> usize {
        self.global.available_permits()
    }
}

impl UserWork {
    /// A budget of its own, for tools and tests that run outside a server (fuzzing, unit tests).
    pub fn unshared(slots: u32) -> UserWork {
        UserWork {
            user: Arc::new(PerUser {
                slots: Semaphore::new(slots.max(1) as usize),
                handles: AtomicUsize::new(0),
                scans: Semaphore::new(slots.max(1) as usize),
            }),
            global: Arc::new(Semaphore::new(slots.max(1) as usize)),
        }
    }

    /// A slot for one more open handle on `connection`, within both handle budgets.
    pub fn open_handle(
        &self,
        connection: &Arc<AtomicUsize>,
        per_connection: u32,
        per_user: u32,
    ) -> Result<HandleSlot, HandleBudget> {
        if !take_slot(connection, per_connection) {
            return Err(HandleBudget::PerConnection(per_connection));
        }
        if !take_slot(&self.user.handles, per_user) {
            connection.fetch_sub(1, Ordering::AcqRel);
            return Err(HandleBudget::PerUser(per_user));
        }
        Ok(HandleSlot {
            user: self.user.clone(),
            connection: connection.clone(),
        })
    }

    /// A turn to have one upload scanned (held while clamd scans it); waits, without a
    /// thread, while the user's other uploads hold every turn. `None` only if closed.
    pub async fn scan_slot(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        self.user.scans.acquire().await.ok()
    }

    /// Runs `work` on the blocking pool once a slot of the user and one of the process are
    /// free; both are held only while it runs.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, WorkError> {
        let closed = |_| WorkError::Cancelled("file work budget closed".into());
        let _user = self.user.slots.acquire().await.map_err(closed)?;
        let _global = self.global.acquire().await.map_err(closed)?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|join| WorkError::Cancelled(join.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The core promise: one user with far more work queued than its budget never runs more
    /// than its slots at once, and another user's work still runs while it waits.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_user_cannot_take_more_than_its_slots() {
        let work = FileWork::new(8);
        let mallory = work.for_user("mallory", 2);
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let mut jobs = Vec::new();
        for _ in 0..40 {
            let (mallory, running, peak) = (mallory.clone(), running.clone(), peak.clone());
            jobs.push(tokio::spawn(async move {
                mallory
                    .run(move || {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(20));
                        running.fetch_sub(1, Ordering::SeqCst);
                    })
                    .await
            }));
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
        // Another user is served at once although mallory has 38 jobs waiting.
        let victim = work.for_user("victim", 2);
        let served = tokio::time::timeout(Duration::from_secs(2), victim.run(|| 42)).await;
        assert_eq!(served.unwrap().unwrap(), 42);
        for job in jobs {
            job.await.unwrap().unwrap();
        }
        assert_eq!(peak.load(Ordering::SeqCst), 2);
        assert_eq!(work.available(), 8);
    }

    #[tokio::test]
    async fn sessions_of_one_user_share_its_budget() {
        let work = FileWork::new(8);
        let first = work.for_user("alice", 1);
        let second = work.for_user("alice", 1);
        let held = first.user.slots.acquire().await.unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(100), second.run(|| ())).await;
        assert!(
            waited.is_err(),
            "the second session did not wait for the shared slot"
        );
        drop(held);
        second.run(|| ()).await.unwrap();
    }

    #[test]
    fn handles_are_counted_per_connection_and_per_user_and_freed_on_drop() {
        let work = FileWork::new(8);
        let alice = work.for_user("alice", 2);
        let (first, second) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let a = alice.open_handle(&first, 2, 3).unwrap();
        let _b = alice.open_handle(&first, 2, 3).unwrap();
        assert_eq!(
            alice.open_handle(&first, 2, 3).err(),
            Some(HandleBudget::PerConnection(2))
        );
        let _c = work
            .for_user("alice", 2)
            .open_handle(&second, 2, 3)
            .unwrap();
        assert_eq!(
            alice.open_handle(&second, 2, 3).err(),
            Some(HandleBudget::PerUser(3))
        );
        // The refused per-user attempt gave its connection slot back.
        assert_eq!(second.load(Ordering::SeqCst), 1);
        drop(a);
        assert!(alice.open_handle(&second, 2, 3).is_ok());
        // Another user is not counted against alice.
        assert!(
            work.for_user("bob", 2)
                .open_handle(&Arc::new(AtomicUsize::new(0)), 2, 3)
                .is_ok()
        );
    }

    #[tokio::test]
    async fn resizing_follows_the_reloaded_budget() {
        let work = FileWork::new(4);
        work.resize(10);
        assert_eq!(work.available(), 10);
        work.resize(3);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(work.available(), 3);
    }
}
