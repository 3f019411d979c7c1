//! Concurrent-session accounting: in total, per source address and per user. Guards release
//! their slot when dropped, so a session that ends in any way frees it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct Counts {
    total: u32,
    per_ip: HashMap<IpAddr, u32>,
    per_user: HashMap<String, u32>,
}

#[derive(Default, Clone)]
pub struct SessionLimits {
    counts: Arc<Mutex<Counts>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("too many sessions on this server")]
    Total,
    #[error("too many sessions from your address")]
    PerIp,
    #[error("too many sessions for this user")]
    PerUser,
    #[error("your address is banned for a while after repeated failed logins")]
    Banned,
    #[error(
        "too many new connections from your address (limits.newConnectionsPerSecond); slow down"
    )]
    Rate,
    #[error("your address may not connect to this server (allowedCidrs)")]
    NotAllowed,
}

pub struct ConnectionGuard {
    limits: SessionLimits,
    ip: IpAddr,
}

pub struct UserGuard {
    limits: SessionLimits,
    user: String,
}

impl SessionLimits {
    pub fn connect(
        &self,
        ip: IpAddr,
        max_total: u32,
        max_per_ip: u32,
    ) -> Result<ConnectionGuard, LimitError> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if counts.total >= max_total {
            return Err(LimitError::Total);
        }
        let per_ip = counts.per_ip.entry(ip).or_default();
        if *per_ip >= max_per_ip {
            return Err(LimitError::PerIp);
        }
        *per_ip += 1;
        counts.total += 1;
        Ok(ConnectionGuard {
            limits: self.clone(),
            ip,
        })
    }

    pub fn login(&self, user: &str, max_per_user: u32) -> Result<UserGuard, LimitError> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.per_user.entry(user.to_string()).or_default();
        if *count >= max_per_user {
            return Err(LimitError::PerUser);
        }
        *count += 1;
        Ok(UserGuard {
            limits: self.clone(),
            user: user.to_string(),
        })
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let mut counts = self.limits.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.total = counts.total.saturating_sub(1);
        if let Some(count) = counts.per_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.per_ip.remove(&self.ip);
            }
        }
    }
}

impl Drop for UserGuard {
    fn drop(&mut self) {
        let mut counts = self.limits.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.per_user.get_mut(&self.user) {
            *count -= 1;
            if *count == 0 {
                counts.per_user.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_and_released() {
        let limits = SessionLimits::default();
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let first = limits.connect(a, 3, 2).unwrap();
        let _second = limits.connect(a, 3, 2).unwrap();
        assert_eq!(limits.connect(a, 3, 2).err(), Some(LimitError::PerIp));
        let _third = limits.connect(b, 3, 2).unwrap();
        assert_eq!(limits.connect(b, 3, 2).err(), Some(LimitError::Total));
        drop(first);
        assert!(limits.connect(a, 3, 2).is_ok());
        let user = limits.login("alice", 1).unwrap();
        assert_eq!(limits.login("alice", 1).err(), Some(LimitError::PerUser));
        drop(user);
        assert!(limits.login("alice", 1).is_ok());
    }
}
