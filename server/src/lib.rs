//! sluice-server as a library: every module of the server, so that the binary (`main.rs`) and
//! the fuzz targets under `fuzz/` build the same code. Declare new modules here (`pub mod x;`).

#![forbid(unsafe_code)]

pub mod admission;
pub mod audit;
pub mod auth;
pub mod ban_sync;
pub mod bans;
pub mod client_cert;
pub mod context;
pub mod demo;
pub mod drain;
pub mod events;
pub mod filework;
pub mod ftp;
pub mod leftovers;
pub mod limits;
pub mod metrics;
pub mod objectfs;
pub mod proxy;
pub mod quota;
pub mod reload;
pub mod retention;
pub mod scan;
pub mod sftp;
pub mod snapshot;
pub mod tls;
pub mod totp;
pub mod userfs;
pub mod verified_cache;
pub mod vpath;
pub mod windows;
