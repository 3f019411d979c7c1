//! Splitting users.yaml over several Secrets, purely. One Secret holds at most 1 MiB, about
//! 4,300 users with an ed25519 key each; a server with more users needs more Secrets. A user's
//! shard is a hash of its username modulo the shard count, so a change to one user rewrites
//! one shard, and the count changes only by doubling or halving (with a wide gap between the
//! two thresholds so that it does not flap). The server reads every `*.yaml` in its users
//! directory, where the pod's projected volume puts shard `i` as `users-ii.yaml`.

use sha2::{Digest, Sha256};
use sluice_config as config;

/// Most shards one server may have: the pod projects this many optional Secret sources.
pub const MAX_SHARDS: usize = 64;
/// A shard grows past this many bytes only when the count is already [`MAX_SHARDS`].
pub const SHARD_LIMIT_BYTES: usize = 700 * 1024;
/// Halve the count when every shard of the halved count would stay below this.
pub const SHARD_SHRINK_BYTES: usize = SHARD_LIMIT_BYTES / 4;

#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("users.yaml: cannot render user {username}: {message}")]
    Render { username: String, message: String },
    #[error(
        "users.yaml: shard {index} holds {bytes} bytes, more than a Secret may hold, with all {MAX_SHARDS} shards in use"
    )]
    TooLarge { index: usize, bytes: usize },
}

/// The shard of `username` among `count` shards (case-insensitive, like username lookup).
pub fn shard_of(username: &str, count: usize) -> usize {
    let digest = Sha256::digest(username.to_ascii_lowercase().as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) % count.max(1) as u64) as usize
}

/// The rendered shards: `files[i]` is the users.yaml of shard `i`; `of_user[username]` its
/// shard.
#[derive(Debug, Clone, PartialEq)]
pub struct Shards {
    pub files: Vec<String>,
}

impl Shards {
    pub fn count(&self) -> usize {
        self.files.len()
    }
}

/// A shard without users.
pub const EMPTY: &str = "apiVersion: sluice.dev/v1alpha1\nkind: UserList\nusers: []\n";

const HEADER: &str = "apiVersion: sluice.dev/v1alpha1\nkind: UserList\nusers:\n";

/// One user as a YAML sequence item (`- ` then the mapping indented by two spaces).
fn item(user: &config::User) -> Result<String, ShardError> {
    let text = serde_saphyr::to_string(user).map_err(|e| ShardError::Render {
        username: user.username.clone(),
        message: e.to_string(),
    })?;
    let mut out = String::with_capacity(text.len() + 64);
    for (index, line) in text.lines().enumerate() {
        out.push_str(if index == 0 { "- " } else { "  " });
        out.push_str(line);
        out.push('\n');
    }
    Ok(out)
}

fn sizes(items: &[(usize, String)], count: usize) -> Vec<usize> {
    let mut sizes = vec![HEADER.len(); count];
    for (hash_slot, text) in items {
        sizes[hash_slot % count] += text.len();
    }
    sizes
}

/// How many shards: from `previous` (the count deployed now), doubled while a shard would
/// exceed [`SHARD_LIMIT_BYTES`], halved while every halved shard stays below
/// [`SHARD_SHRINK_BYTES`]. Counts are powers of two, so doubling splits each shard in two.
fn shard_count(items: &[(usize, String)], previous: usize) -> usize {
    let mut count = previous.clamp(1, MAX_SHARDS).next_power_of_two();
    while count < MAX_SHARDS && sizes(items, count).iter().any(|s| *s > SHARD_LIMIT_BYTES) {
        count *= 2;
    }
    while count > 1
        && sizes(items, count / 2)
            .iter()
            .all(|s| *s < SHARD_SHRINK_BYTES)
    {
        count /= 2;
    }
    count
}

/// Renders `list` into shards, keeping `previous_count` unless a shard outgrows a Secret or
/// the users fit into half as many.
pub fn render(list: &config::UserList, previous_count: usize) -> Result<Shards, ShardError> {
    // The slot modulo MAX_SHARDS; any power-of-two count divides it, so `slot % count` is
    // the shard for every count.
    let items: Vec<(usize, String)> = list
        .users
        .iter()
        .map(|user| Ok((shard_of(&user.username, MAX_SHARDS), item(user)?)))
        .collect::<Result<_, ShardError>>()?;
    let count = shard_count(&items, previous_count);
    let mut files = vec![String::from(HEADER); count];
    for (slot, text) in &items {
        files[slot % count].push_str(text);
    }
    for file in files.iter_mut() {
        if file.len() == HEADER.len() {
            *file = EMPTY.into();
        }
    }
    if let Some((index, file)) = files
        .iter()
        .enumerate()
        .find(|(_, f)| f.len() > SHARD_LIMIT_BYTES * 3 / 2)
    {
        return Err(ShardError::TooLarge {
            index,
            bytes: file.len(),
        });
    }
    Ok(Shards { files })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> config::User {
        config::User {
            username: name.into(),
            password_hash: None,
            ssh_authorized_keys: vec![
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
                    .into(),
            ],
            home: name.into(),
            permissions: vec![config::Permission::List, config::Permission::Download],
            allowed_cidrs: Vec::new(),
            protocols: Vec::new(),
            expires_at: None,
            disabled: false,
            password_authentication: true,
            required_auth: Vec::new(),
            totp: None,
            client_certificates: Vec::new(),
            ftps_auth: Default::default(),
            login_windows: Vec::new(),
            password_changed_at: None,
            ftps_data_binding: Default::default(),
            quota: None,
            retention: Vec::new(),
        }
    }

    fn list(count: usize) -> config::UserList {
        config::UserList {
            api_version: config::API_VERSION.into(),
            kind: "UserList".into(),
            users: (0..count).map(|i| user(&format!("user{i:05}"))).collect(),
        }
    }

    fn parsed(shards: &Shards) -> Vec<config::UserList> {
        shards
            .files
            .iter()
            .enumerate()
            .map(|(i, f)| config::UserList::parse(&format!("users-{i:02}.yaml"), f).unwrap())
            .collect()
    }

    #[test]
    fn few_users_stay_in_one_shard_that_the_server_parses() {
        let shards = render(&list(10), 1).unwrap();
        assert_eq!(shards.count(), 1);
        assert_eq!(parsed(&shards)[0].users.len(), 10);
        assert_eq!(parsed(&shards)[0], list(10));
        let empty = render(&list(0), 4).unwrap();
        assert_eq!(empty.count(), 1);
        assert!(parsed(&empty)[0].users.is_empty());
    }

    #[test]
    fn many_users_are_split_below_the_limit_and_every_user_is_in_its_shard() {
        let users = list(12_000);
        let shards = render(&users, 1).unwrap();
        assert!(shards.count() >= 4, "{}", shards.count());
        assert!(shards.files.iter().all(|f| f.len() <= SHARD_LIMIT_BYTES));
        let lists = parsed(&shards);
        assert_eq!(lists.iter().map(|l| l.users.len()).sum::<usize>(), 12_000);
        for (index, list) in lists.iter().enumerate() {
            assert!(
                list.users
                    .iter()
                    .all(|u| shard_of(&u.username, shards.count()) == index)
            );
        }
    }

    #[test]
    fn one_user_change_rewrites_one_shard() {
        let mut users = list(12_000);
        let before = render(&users, 1).unwrap();
        users.users[777].home = "elsewhere".into();
        let after = render(&users, before.count()).unwrap();
        assert_eq!(after.count(), before.count());
        let changed: Vec<usize> = (0..after.count())
            .filter(|i| before.files[*i] != after.files[*i])
            .collect();
        assert_eq!(changed, vec![shard_of("user00777", after.count())]);
    }

    #[test]
    fn the_count_is_kept_between_the_thresholds_and_halved_when_users_leave() {
        let big = render(&list(12_000), 1).unwrap();
        // A few users fewer: same count, no reshuffle.
        assert_eq!(
            render(&list(11_900), big.count()).unwrap().count(),
            big.count()
        );
        // Most users gone: fewer shards.
        assert_eq!(render(&list(100), big.count()).unwrap().count(), 1);
    }
}
