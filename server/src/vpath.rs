//! Virtual paths as clients see them (`/reports/2026.csv`): parsing and normalising client
//! arguments against the current directory, purely, before any filesystem access.
//!
//! Normalisation clamps `..` at the virtual root (as every FTP server does), so `/../../etc`
//! names `/etc` *inside the user's home*. Confinement itself is not this module's job: the
//! result is always resolved beneath the home by cap-std, which also defeats symlinks.

use std::fmt;

/// Longest path we accept from a client, in bytes.
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest single name (Linux NAME_MAX).
pub const MAX_NAME_BYTES: usize = 255;

/// A normalised absolute virtual path: `/` or `/a/b`, never `.`/`..`/empty components.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VirtualPath {
    components: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path contains a NUL byte")]
    Nul,
    #[error("path is longer than {MAX_PATH_BYTES} bytes")]
    TooLong,
    #[error("a name in the path is longer than {MAX_NAME_BYTES} bytes")]
    NameTooLong,
}

impl VirtualPath {
    pub fn root() -> Self {
        Self::default()
    }

    /// Resolves a client argument against `self` (the current directory).
    pub fn resolve(&self, argument: &str) -> Result<VirtualPath, PathError> {
        if argument.contains('\0') {
            return Err(PathError::Nul);
        }
        if argument.len() > MAX_PATH_BYTES {
            return Err(PathError::TooLong);
        }
        let mut components = if argument.starts_with('/') {
            Vec::new()
        } else {
            self.components.clone()
        };
        for part in argument.split('/') {
            match part {
                "" | "." => {}
                ".." => {
                    components.pop();
                }
                name if name.len() > MAX_NAME_BYTES => return Err(PathError::NameTooLong),
                name => components.push(name.to_string()),
            }
        }
        let path = VirtualPath { components };
        if path.to_string().len() > MAX_PATH_BYTES {
            return Err(PathError::TooLong);
        }
        Ok(path)
    }

    pub fn is_root(&self) -> bool {
        self.components.is_empty()
    }

    pub fn parent(&self) -> VirtualPath {
        let mut components = self.components.clone();
        components.pop();
        VirtualPath { components }
    }

    pub fn file_name(&self) -> Option<&str> {
        self.components.last().map(String::as_str)
    }

    /// The path relative to the user's home, as cap-std wants it (`.` for the home itself).
    pub fn relative(&self) -> String {
        if self.components.is_empty() {
            ".".to_string()
        } else {
            self.components.join("/")
        }
    }
}

impl fmt::Display for VirtualPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.components.is_empty() {
            return f.write_str("/");
        }
        for component in &self.components {
            write!(f, "/{component}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(cwd: &str, arg: &str) -> String {
        VirtualPath::root()
            .resolve(cwd)
            .unwrap()
            .resolve(arg)
            .unwrap()
            .to_string()
    }

    #[test]
    fn dot_dot_is_clamped_at_the_root() {
        assert_eq!(at("/", "../../etc/passwd"), "/etc/passwd");
        assert_eq!(at("/a/b", "/../../etc/passwd"), "/etc/passwd");
        assert_eq!(at("/a/b", "../c"), "/a/c");
        assert_eq!(at("/a", "....//x"), "/a/..../x");
        assert_eq!(at("/", "%2e%2e/%2e%2e/etc"), "/%2e%2e/%2e%2e/etc");
        assert_eq!(at("/a", "./b/./c/"), "/a/b/c");
        assert_eq!(at("/a", ""), "/a");
    }

    #[test]
    fn relative_form_never_starts_with_a_slash_or_dot_dot() {
        for arg in ["/", "..", "../..", "/x/../..", "a/b"] {
            let rel = VirtualPath::root().resolve(arg).unwrap().relative();
            assert!(
                !rel.starts_with('/') && !rel.starts_with(".."),
                "{arg} -> {rel}"
            );
        }
    }

    #[test]
    fn hostile_arguments_are_errors() {
        let root = VirtualPath::root();
        assert_eq!(root.resolve("a\0b"), Err(PathError::Nul));
        assert_eq!(root.resolve(&"x".repeat(5000)), Err(PathError::TooLong));
        assert_eq!(root.resolve(&"x".repeat(300)), Err(PathError::NameTooLong));
    }
}
