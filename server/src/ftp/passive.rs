//! The passive-port pool: ports come only from the configured range, each held by one session
//! until its data connection is made or its reservation times out.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;

pub struct PassivePool {
    start: u16,
    end: u16,
    state: Mutex<PoolState>,
}

struct PoolState {
    next: u16,
    in_use: HashSet<u16>,
}

/// A bound passive port; the port returns to the pool when this is dropped.
pub struct PassiveLease {
    pub listener: TcpListener,
    pub port: u16,
    pool: Arc<PassivePool>,
}

impl Drop for PassiveLease {
    fn drop(&mut self) {
        let mut state = self.pool.state.lock().unwrap_or_else(|p| p.into_inner());
        state.in_use.remove(&self.port);
    }
}

impl PassivePool {
    pub fn new(start: u16, end: u16) -> Arc<PassivePool> {
        Arc::new(PassivePool {
            start,
            end,
            state: Mutex::new(PoolState {
                next: start,
                in_use: HashSet::new(),
            }),
        })
    }

    pub fn range(&self) -> (u16, u16) {
        (self.start, self.end)
    }

    /// Binds the next free port of the range on `ip`; `None` when every port is taken.
    pub fn lease(self: &Arc<Self>, ip: IpAddr) -> Option<PassiveLease> {
        let size = u32::from(self.end - self.start) + 1;
        for _ in 0..size {
            let port = {
                let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                let port = state.next;
                state.next = if port >= self.end {
                    self.start
                } else {
                    port + 1
                };
                if !state.in_use.insert(port) {
                    continue;
                }
                port
            };
            let bound = std::net::TcpListener::bind(SocketAddr::new(ip, port)).and_then(|l| {
                l.set_nonblocking(true)?;
                TcpListener::from_std(l)
            });
            match bound {
                Ok(listener) => {
                    return Some(PassiveLease {
                        listener,
                        port,
                        pool: self.clone(),
                    });
                }
                Err(_) => {
                    let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                    state.in_use.remove(&port);
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn leases_stay_in_range_and_return() {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = probe.local_addr().unwrap().port();
        drop(probe);
        let (start, end) = (base.saturating_sub(1), base);
        let pool = PassivePool::new(start, end);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let leases: Vec<_> = std::iter::from_fn(|| pool.lease(ip)).take(5).collect();
        assert!(leases.len() <= 2);
        assert!(leases.iter().all(|l| (start..=end).contains(&l.port)));
        let count = leases.len();
        drop(leases);
        let again: Vec<_> = std::iter::from_fn(|| pool.lease(ip)).take(5).collect();
        assert_eq!(again.len(), count);
    }
}
