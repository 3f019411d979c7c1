//! The russh handler of one SSH connection: authentication (public key, password, required
//! combinations with partial success) with the same account checks as FTPS, and channel
//! policy: only the `sftp` subsystem; shell, exec, pty, env, X11, agent and every kind of
//! forwarding are refused at once and audited.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use russh::keys::ssh_key::{Algorithm, HashAlg};
use russh::server::{Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, ChannelOpenFailure, MethodKind, MethodSet};
use serde_json::json;
use sluice_config::{Protocol, SshAuthMethod, User};

use super::Shared;
use super::keys::{self, SshMaterial};
use super::session::{self, End, SessionEnv};
use super::tap::{self, KillSwitch, SharedCapture};
use crate::audit::SessionTag;
use crate::context::Context;
use crate::limits::UserGuard;
use crate::metrics::Metrics;
use crate::snapshot::Snapshot;
use crate::userfs::UserFs;

/// Session channels one connection may open (OpenSSH clients use one).
const MAX_CHANNELS: usize = 4;

struct LoggedIn {
    user: Arc<User>,
    fs: UserFs,
    _guard: Arc<UserGuard>,
}

pub struct SshHandler {
    context: Arc<Context>,
    material: Arc<SshMaterial>,
    snapshot: Arc<Snapshot>,
    tag: SessionTag,
    client_ip: IpAddr,
    capture: SharedCapture,
    shared: Arc<Shared>,
    kill: Arc<KillSwitch>,
    handshake_logged: bool,
    failures: u32,
    /// Public keys offered without a signature and refused (not failed logins).
    key_offers: u32,
    /// Methods that succeeded so far, and for which user (a different name starts over).
    passed: HashSet<SshAuthMethod>,
    passed_user: Option<String>,
    /// The TOTP code (keyboard-interactive) of `passed_user` was accepted.
    totp_passed: bool,
    key_fingerprint: Option<String>,
    logged_in: Option<LoggedIn>,
    channels: HashMap<ChannelId, Channel<Msg>>,
    opened: usize,
    /// A login was refused by the user's session pacing: the connection is ended, like FTPS
    /// does, so that a client cannot retry at no cost on the same connection.
    pace_refused: bool,
}

impl SshHandler {
    pub fn new(
        context: Arc<Context>,
        material: Arc<SshMaterial>,
        tag: SessionTag,
        client_ip: IpAddr,
        capture: SharedCapture,
        shared: Arc<Shared>,
        kill: Arc<KillSwitch>,
    ) -> Self {
        let snapshot = context.snapshot.borrow().clone();
        SshHandler {
            context,
            material,
            snapshot,
            tag,
            client_ip,
            capture,
            shared,
            kill,
            handshake_logged: false,
            failures: 0,
            key_offers: 0,
            passed: HashSet::new(),
            passed_user: None,
            totp_passed: false,
            key_fingerprint: None,
            logged_in: None,
            channels: HashMap::new(),
            opened: 0,
            pace_refused: false,
        }
    }

    fn audit(&self, event: &str, fields: serde_json::Value) {
        self.context.audit.event(&self.tag, event, fields);
    }

    /// The `ssh` event: client version and the negotiated algorithms, once, when the key
    /// exchange is done (at the first authentication request).
    fn log_handshake(&mut self) {
        if self.handshake_logged {
            return;
        }
        self.handshake_logged = true;
        let hello = tap::client_hello(&self.capture).unwrap_or_default();
        let config = &self.snapshot.config.ssh;
        let cipher = tap::negotiate(&hello.cipher, &config.effective_ciphers());
        let aead = cipher
            .as_deref()
            .is_some_and(|c| c.contains("gcm") || c.contains("poly1305"));
        let mac = if aead {
            None
        } else {
            tap::negotiate(&hello.mac, &config.effective_macs())
        };
        let ours: Vec<String> = self
            .material
            .config
            .keys
            .iter()
            .map(|k| k.algorithm().as_str().to_string())
            .collect();
        let host_keys: Vec<String> = config
            .effective_host_key_algorithms()
            .into_iter()
            .filter(|a| {
                ours.iter()
                    .any(|o| o == a || (o == "ssh-rsa" && a.starts_with("rsa-sha2-")))
            })
            .collect();
        self.audit(
            "ssh",
            json!({
                "result": "success",
                "client_version": hello.version,
                "kex": tap::negotiate(&hello.kex, &config.effective_kex()),
                "host_key_algorithm": tap::negotiate(&hello.host_key, &host_keys),
                "cipher": cipher,
                "mac": mac,
                "compression": "none",
            }),
        );
    }

    fn refresh_snapshot(&mut self) {
        self.snapshot = self.context.snapshot.borrow().clone();
    }

    fn methods_remaining(&self, user: &User) -> MethodSet {
        let mut methods = Vec::new();
        for method in &user.required_auth {
            if !self.passed.contains(method) {
                methods.push(match method {
                    SshAuthMethod::Publickey => MethodKind::PublicKey,
                    SshAuthMethod::Password => MethodKind::Password,
                });
            }
        }
        if user.totp.is_some() && !self.totp_passed {
            methods.push(MethodKind::KeyboardInteractive);
        }
        MethodSet::from(methods.as_slice())
    }

    /// Names of the factors still missing, for the `partial` audit event.
    fn remaining_names(&self, user: &User) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = user
            .required_auth
            .iter()
            .filter(|m| !self.passed.contains(m))
            .map(|m| m.as_str())
            .collect();
        if user.totp.is_some() && !self.totp_passed {
            names.push("keyboard-interactive");
        }
        names
    }

    /// Whether the first factor (every `requiredAuth` method, or any one method) passed.
    fn first_factor_passed(&self, user: &User) -> bool {
        if user.required_auth.is_empty() {
            !self.passed.is_empty()
        } else {
            user.required_auth.iter().all(|m| self.passed.contains(m))
        }
    }

    /// The keyboard-interactive TOTP step: prompt for the code after the first factor, then
    /// check it (a wrong or replayed code is a failed login; the code is never logged).
    async fn totp_step(&mut self, name: &str, code: Option<String>) -> Auth {
        let user = self.snapshot.user(name).cloned();
        let ready = self.passed_user.as_deref() == Some(name)
            && user
                .as_ref()
                .is_some_and(|u| u.totp.is_some() && self.first_factor_passed(u));
        let Some(user) = user.filter(|_| ready) else {
            // Keyboard-interactive only carries the code, after publickey or password.
            return self.rejection();
        };
        let Some(code) = code else {
            return Auth::Partial {
                name: "".into(),
                instructions: "".into(),
                prompts: vec![("Verification code: ".into(), false)].into(),
            };
        };
        let Some(totp) = user.totp.as_ref() else {
            return self.rejection();
        };
        let outcome = self.context.totp.verify_now(name, totp, &code);
        if outcome != crate::totp::TotpOutcome::Accepted {
            self.failed(name, "keyboard-interactive", outcome.reason())
                .await;
            // The first factor stays passed: the client may try another code.
            return Auth::Reject {
                proceed_with_methods: Some(MethodSet::from(
                    [MethodKind::KeyboardInteractive].as_slice(),
                )),
                partial_success: false,
            };
        }
        self.totp_passed = true;
        self.evaluate(name, "keyboard-interactive").await
    }

    /// Counts, meters and audits a failed login attempt (`extra` adds fields to its event).
    fn audit_failure(&mut self, user: &str, method: &str, reason: &str, extra: serde_json::Value) {
        self.failures += 1;
        Metrics::inc(
            &self.context.metrics.logins,
            &[("protocol", "sftp"), ("result", "failure")],
        );
        let mut tag = self.tag.clone();
        tag.user = Some(user.chars().take(128).collect());
        let mut fields = json!({"result": "failure", "method": method, "reason": reason,
                                "attempt": self.failures});
        if let (Some(fields), serde_json::Value::Object(extra)) = (fields.as_object_mut(), extra) {
            fields.extend(extra);
        }
        self.context.audit.event(&tag, "login", fields);
    }

    async fn failed(&mut self, user: &str, method: &str, reason: &str) -> Auth {
        crate::admission::record_login_failure(&self.context, self.client_ip, Some(user));
        let key = if method == "publickey" {
            self.key_fingerprint.clone()
        } else {
            None
        };
        self.audit_failure(user, method, reason, json!({"key_sha256": key}));
        if self.failures >= self.snapshot.config.limits.max_auth_attempts
            && let Ok(mut slot) = self.shared.end_reason.lock()
        {
            *slot = Some("too many failed logins".into());
        }
        self.failure_delay().await;
        self.rejection()
    }

    /// A login refused outside the user's login windows: audited, but not counted towards
    /// bans (the credentials were right; it is not a guessing attempt).
    async fn refused_outside_window(
        &mut self,
        user: &str,
        method: &str,
        refusal: crate::windows::Refusal,
    ) -> Auth {
        let next_open = match refusal {
            crate::windows::Refusal::OutsideWindow { next_open } => {
                next_open.map(|at| at.to_string())
            }
            crate::windows::Refusal::PasswordExpired => None,
        };
        self.audit_failure(
            user,
            method,
            refusal.audit_reason(),
            json!({"next_open": next_open}),
        );
        if self.failures >= self.snapshot.config.limits.max_auth_attempts
            && let Ok(mut slot) = self.shared.end_reason.lock()
        {
            *slot = Some("too many failed logins".into());
        }
        self.failure_delay().await;
        self.rejection()
    }

    /// A login refused because its user started too many sessions
    /// (`limits.newSessionsPerUserPerSecond`): audited, not counted towards bans (the
    /// credentials were right), after the failure delay like every refusal (its timing tells
    /// nothing), and the connection ends ([`Self::ended_by_pace`]).
    async fn refused_by_pace(&mut self, user: &str, method: &str) -> Auth {
        let reason = crate::admission::PACE_REFUSAL_REASON;
        self.audit_failure(user, method, reason, json!({}));
        if let Ok(mut slot) = self.shared.end_reason.lock() {
            *slot = Some(reason.into());
        }
        self.pace_refused = true;
        self.failure_delay().await;
        self.rejection()
    }

    /// `auth` unless the login was just refused by the session pacing: then a disconnect.
    fn ended_by_pace(&self, auth: Auth) -> Result<Auth, russh::Error> {
        if self.pace_refused {
            return Err(russh::Error::Disconnect);
        }
        Ok(auth)
    }

    /// Every counted failure takes `limits.authFailureDelayMs` (slows guessing; the same for
    /// every reason, so timing tells nothing).
    async fn failure_delay(&self) {
        let delay = self.snapshot.config.limits.auth_failure_delay_ms;
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }

    /// Ends the connection once `limits.maxAuthAttempts` attempts have failed.
    fn over_limit(&self) -> Result<(), russh::Error> {
        if self.failures >= self.snapshot.config.limits.max_auth_attempts {
            return Err(russh::Error::Disconnect);
        }
        Ok(())
    }

    /// A rejection that keeps offering every configured method (russh would otherwise drop
    /// the method that just failed, and clients such as paramiko then stop trying).
    fn rejection(&self) -> Auth {
        let mut methods = vec![MethodKind::PublicKey];
        if self.material.password_authentication {
            methods.push(MethodKind::Password);
        }
        Auth::Reject {
            proceed_with_methods: Some(MethodSet::from(methods.as_slice())),
            partial_success: false,
        }
    }

    /// One method succeeded for `name`: ask for the remaining required methods, or run the
    /// account checks (disabled, expired, protocol, address, per-user limit, home) and log in.
    async fn method_passed(&mut self, name: &str, method: SshAuthMethod) -> Auth {
        if self.passed_user.as_deref() != Some(name) {
            self.passed.clear();
            self.totp_passed = false;
            self.passed_user = Some(name.to_string());
        }
        self.passed.insert(method);
        self.evaluate(name, method.as_str()).await
    }

    /// After `method` succeeded: partial success while factors remain, else the account
    /// checks and the login.
    async fn evaluate(&mut self, name: &str, method: &str) -> Auth {
        let Some(user) = self.snapshot.user(name).cloned() else {
            return self.failed(name, method, "invalid credentials").await;
        };
        let remaining = self.methods_remaining(&user);
        if !remaining.is_empty() {
            let mut tag = self.tag.clone();
            tag.user = Some(name.to_string());
            self.context.audit.event(
                &tag,
                "login",
                json!({
                    "result": "partial",
                    "method": method,
                    "key_sha256": self.key_fingerprint,
                    "remaining": self.remaining_names(&user),
                }),
            );
            return Auth::Reject {
                proceed_with_methods: Some(remaining),
                partial_success: true,
            };
        }
        let now = jiff::Timestamp::now();
        let refusal = user.login_refusal(Protocol::Sftp, self.client_ip, now);
        if let Some(reason) = refusal {
            return self.failed(name, method, reason).await;
        }
        // A password took part in this login: the first factor that passed (keyboard-
        // interactive TOTP may have come after it), or one of the required ones (not an
        // earlier failed attempt).
        let password_used = if user.required_auth.is_empty() {
            self.passed.contains(&SshAuthMethod::Password)
        } else {
            user.required_auth.contains(&SshAuthMethod::Password)
        };
        if let Some(refusal) = crate::windows::login_refusal(
            &user,
            &self.snapshot.config.passwords,
            password_used,
            crate::windows::now(),
        ) {
            if refusal.counts_for_bans() {
                return self.failed(name, method, refusal.audit_reason()).await;
            }
            return self.refused_outside_window(name, method, refusal).await;
        }
        if crate::admission::pace_new_session(
            &self.context,
            &self.snapshot.config.limits,
            &self.tag,
            &user.username,
        )
        .await
        .is_err()
        {
            return self.refused_by_pace(name, method).await;
        }
        let guard = match self.context.limits.login(
            &user.username,
            self.snapshot.config.limits.max_sessions_per_user,
        ) {
            Ok(guard) => guard,
            Err(_) => {
                return self
                    .failed(name, method, "too many sessions for this user")
                    .await;
            }
        };
        let data_root = self.snapshot.data_root.display().to_string();
        let fs = match UserFs::open(
            data_root,
            user.home.clone(),
            self.context.user_work(&user.username),
        )
        .await
        {
            Ok(fs) => {
                let fs = fs.with_object_store(self.snapshot.object_store.as_deref());
                crate::quota::attach(&self.context, &user, &self.tag, fs).await
            }
            Err(error) => {
                tracing::error!(user = %user.username, %error, "cannot open home directory");
                return self
                    .failed(
                        name,
                        method,
                        &format!("home directory unavailable: {error}"),
                    )
                    .await;
            }
        };
        let mut methods: Vec<&str> = if user.required_auth.is_empty() {
            self.passed.iter().take(1).map(|m| m.as_str()).collect()
        } else {
            user.required_auth.iter().map(|m| m.as_str()).collect()
        };
        if user.totp.is_some() {
            methods.push("totp");
        }
        self.tag.user = Some(user.username.clone());
        Metrics::inc(
            &self.context.metrics.logins,
            &[("protocol", "sftp"), ("result", "success")],
        );
        self.audit(
            "login",
            json!({
                "result": "success",
                "method": methods.join("+"),
                "key_sha256": if self.passed.contains(&SshAuthMethod::Publickey) { self.key_fingerprint.clone() } else { None },
            }),
        );
        if let Ok(mut slot) = self.shared.home.lock() {
            *slot = Some(user.home.clone());
        }
        if let Ok(mut slot) = self.shared.user.lock() {
            *slot = Some(user.username.clone());
        }
        self.shared.logged_in.notify_one();
        self.logged_in = Some(LoggedIn {
            user,
            fs,
            _guard: Arc::new(guard),
        });
        Auth::Accept
    }

    fn key_allowed(&self, name: &str, key: &russh::keys::PublicKey) -> bool {
        let Some(user) = self.snapshot.user(name) else {
            return false;
        };
        if user.required_auth.is_empty() || user.required_auth.contains(&SshAuthMethod::Publickey) {
            self.snapshot
                .ssh_keys
                .get(name)
                .is_some_and(|keys| keys.iter().any(|k| k.key_data() == key.key_data()))
        } else {
            false
        }
    }

    fn refuse(&self, request: &str, extra: serde_json::Value) {
        let mut fields = json!({"request": request});
        if let (Some(target), serde_json::Value::Object(extra)) = (fields.as_object_mut(), extra) {
            target.extend(extra);
        }
        self.audit("request_refused", fields);
    }
}

impl russh::server::Handler for SshHandler {
    type Error = russh::Error;

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        self.log_handshake();
        Ok(self.rejection())
    }

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        self.log_handshake();
        self.refresh_snapshot();
        self.over_limit()?;
        if *offer.algorithm == (Algorithm::Rsa { hash: None }) {
            // ssh-rsa signatures use SHA-1.
            return Ok(self.rejection());
        }
        if self.key_allowed(user, offer.public_key) {
            return Ok(Auth::Accept);
        }
        // An offer without a signature is not a login attempt: it proves nothing, costs the
        // server nothing, and clients with several keys (an agent, several -i) offer them in
        // turn. Not a failed login, not counted towards bans; bounded by its own limit.
        self.key_offers += 1;
        let mut tag = self.tag.clone();
        tag.user = Some(user.chars().take(128).collect());
        self.context.audit.event(
            &tag,
            "publickey_offer",
            json!({"result": "refused", "key_sha256": keys::fingerprint(offer.public_key),
                   "offer": self.key_offers, "max_offers": keys::MAX_KEY_OFFERS}),
        );
        if self.key_offers > keys::MAX_KEY_OFFERS {
            if let Ok(mut slot) = self.shared.end_reason.lock() {
                *slot = Some("too many public keys offered".into());
            }
            return Err(russh::Error::Disconnect);
        }
        Ok(self.rejection())
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        self.log_handshake();
        self.refresh_snapshot();
        self.over_limit()?;
        self.key_fingerprint = Some(key.public_key.fingerprint(HashAlg::Sha256).to_string());
        // A username ban (failed passwords from many addresses) is not checked here: a valid
        // signature is no guess, and checking it let anyone lock a partner's key logins out
        // with a few wrong passwords from ten addresses.
        if *key.algorithm == (Algorithm::Rsa { hash: None })
            || !self.key_allowed(user, key.public_key)
        {
            return Ok(self.failed(user, "publickey", "invalid credentials").await);
        }
        let auth = self.method_passed(user, SshAuthMethod::Publickey).await;
        self.ended_by_pace(auth)
    }

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        self.log_handshake();
        self.refresh_snapshot();
        self.over_limit()?;
        if crate::admission::user_banned(&self.context, user, self.client_ip) {
            return Ok(self
                .failed(user, "password", "user banned after repeated failed logins")
                .await);
        }
        let account = self.snapshot.user(user).cloned();
        let allowed = self.material.password_authentication
            && account.as_ref().is_some_and(|u| {
                u.password_authentication
                    && (u.required_auth.is_empty()
                        || u.required_auth.contains(&SshAuthMethod::Password))
            });
        // Unknown users, users without a hash and users with password login turned off all
        // verify against a dummy hash, so that timing does not tell them apart.
        let hash = if allowed {
            account.as_ref().and_then(|u| u.password_hash.clone())
        } else {
            None
        };
        let verified = crate::admission::verify_password(
            &self.context,
            &self.snapshot,
            self.client_ip,
            password,
            hash,
        )
        .await;
        if !verified {
            return Ok(self.failed(user, "password", "invalid credentials").await);
        }
        let auth = self.method_passed(user, SshAuthMethod::Password).await;
        self.ended_by_pace(auth)
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        user: &str,
        _submethods: &str,
        response: Option<russh::server::Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        self.log_handshake();
        self.refresh_snapshot();
        self.over_limit()?;
        let code = response.map(|mut answers| {
            answers
                .next()
                .map(|bytes| String::from_utf8_lossy(&bytes).chars().take(16).collect())
                .unwrap_or_default()
        });
        let auth = self.totp_step(user, code).await;
        self.ended_by_pace(auth)
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.logged_in.is_none() || self.opened >= MAX_CHANNELS {
            self.refuse("session", json!({"reason": "too many channels"}));
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        }
        self.opened += 1;
        self.channels.insert(channel.id(), channel);
        reply.accept().await;
        Ok(())
    }

    async fn channel_open_x11(
        &mut self,
        _channel: Channel<Msg>,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse("x11", json!({}));
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let target: String = host_to_connect.chars().take(255).collect();
        self.refuse(
            "direct-tcpip",
            json!({"target": format!("{target}:{port_to_connect}")}),
        );
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn channel_open_forwarded_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        _host_to_connect: &str,
        _port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse("forwarded-tcpip", json!({}));
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn channel_open_direct_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        _socket_path: &str,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse("direct-streamlocal", json!({}));
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse("pty-req", json!({}));
        session.channel_failure(channel)
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse("x11-req", json!({}));
        session.channel_failure(channel)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        variable_name: &str,
        _variable_value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let name: String = variable_name.chars().take(64).collect();
        self.refuse("env", json!({"name": name}));
        session.channel_failure(channel)
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse("shell", json!({}));
        session.channel_failure(channel)?;
        self.channels.remove(&channel);
        session.close(channel)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let command: String = String::from_utf8_lossy(data).chars().take(256).collect();
        self.refuse("exec", json!({"command": command}));
        session.channel_failure(channel)?;
        self.channels.remove(&channel);
        session.close(channel)
    }

    async fn agent_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refuse("auth-agent-req", json!({}));
        session.channel_failure(channel)?;
        Ok(false)
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let address: String = address.chars().take(255).collect();
        self.refuse(
            "tcpip-forward",
            json!({"target": format!("{address}:{port}")}),
        );
        Ok(false)
    }

    async fn streamlocal_forward(
        &mut self,
        _socket_path: &str,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refuse("streamlocal-forward", json!({}));
        Ok(false)
    }

    async fn subsystem_request(
        &mut self,
        channel_id: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let channel = self.channels.remove(&channel_id);
        let (Some(channel), Some(logged_in), "sftp") = (channel, self.logged_in.as_ref(), name)
        else {
            let name: String = name.chars().take(64).collect();
            self.refuse("subsystem", json!({"name": name}));
            session.channel_failure(channel_id)?;
            return session.close(channel_id);
        };
        session.channel_success(channel_id)?;
        self.audit("subsystem", json!({"name": "sftp"}));
        let env = SessionEnv {
            audit: self.context.audit.clone(),
            metrics: self.context.metrics.clone(),
            snapshot: self.context.snapshot.clone(),
            tag: self.tag.clone(),
            client_ip: self.client_ip,
            user: logged_in.user.clone(),
            fs: logged_in.fs.clone(),
            open_files: self.shared.open_files.clone(),
            open_handles: self.shared.open_handles.clone(),
            events: self.context.events.clone(),
        };
        let guard = logged_in._guard.clone();
        let handle = session.handle();
        let audit = self.context.audit.clone();
        let tag = self.tag.clone();
        let kill = self.kill.clone();
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let end = session::run(channel, env).await;
            drop(guard);
            match end {
                End::ClientClosed => {
                    let _ = handle.close(channel_id).await;
                }
                End::Io(error) => {
                    tracing::debug!(%error, "sftp channel i/o ended");
                    let _ = handle.close(channel_id).await;
                }
                End::Ended(reason) | End::Budget(_, _, reason) => {
                    if let Ok(mut slot) = shared.end_reason.lock() {
                        *slot = Some(reason.clone());
                    }
                    let _ = tokio::time::timeout(
                        std::time::Duration::from_secs(2),
                        handle.disconnect(russh::Disconnect::ByApplication, reason, String::new()),
                    )
                    .await;
                    kill.fire();
                }
                End::Fatal(reason) => {
                    audit.event(&tag, "protocol_error", json!({"error": reason}));
                    if let Ok(mut slot) = shared.end_reason.lock() {
                        *slot = Some("sftp protocol error".into());
                    }
                    let _ = tokio::time::timeout(
                        std::time::Duration::from_secs(2),
                        handle.disconnect(
                            russh::Disconnect::ProtocolError,
                            "SFTP protocol error".into(),
                            String::new(),
                        ),
                    )
                    .await;
                    kill.fire();
                }
            }
        });
        Ok(())
    }
}
