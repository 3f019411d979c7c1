//! Path resolution and confinement: client arguments (with `..`, `.`, `//`, NUL, unicode,
//! over-long names and symlinks that point outside) resolved by `VirtualPath` against a
//! current directory, then used for real file operations through `UserFs` (cap-std) in a
//! temporary directory. Invariants: a resolved virtual path is absolute, has no empty, `.` or
//! `..` component and resolves to itself; its relative form never starts with `/` or `..`;
//! whenever `UserFs` reaches an object, the same path resolved by the kernel without
//! confinement (`canonicalize`) lies under the home; nothing outside the home is ever
//! created, changed or removed.

#![no_main]

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use sluice_server::userfs::{OpenForWrite, Replace, UserFs};
use sluice_server::vpath::VirtualPath;

/// Pieces of a generated path: structure the fuzzer would rarely find byte by byte.
#[derive(Arbitrary, Debug)]
enum Piece {
    Slash,
    Dot,
    DotDot,
    /// A symlink in the home pointing to the sibling `outside` directory.
    Escape,
    /// A symlink in the home pointing to `/`.
    Absolute,
    /// A symlink in the home pointing to `..` (the data root).
    Up,
    /// A symlink to a directory inside the home (allowed).
    Inner,
    Sub,
    Secret,
    Nul,
    Long(u16),
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum Op {
    Cd(Vec<Piece>),
    Stat(Vec<Piece>, bool),
    List(Vec<Piece>),
    Mkdir(Vec<Piece>),
    Create(Vec<Piece>, bool),
    Remove(Vec<Piece>),
    Rmdir(Vec<Piece>),
    Rename(Vec<Piece>, Vec<Piece>),
    ReadLink(Vec<Piece>),
    Read(Vec<Piece>),
}

fn text(pieces: &[Piece]) -> String {
    let mut out = String::new();
    for piece in pieces.iter().take(64) {
        match piece {
            Piece::Slash => out.push('/'),
            Piece::Dot => out.push('.'),
            Piece::DotDot => out.push_str(".."),
            Piece::Escape => out.push_str("escape"),
            Piece::Absolute => out.push_str("absolute"),
            Piece::Up => out.push_str("up"),
            Piece::Inner => out.push_str("inner"),
            Piece::Sub => out.push_str("sub"),
            Piece::Secret => out.push_str("secret.txt"),
            Piece::Nul => out.push('\0'),
            Piece::Long(n) => out.push_str(&"x".repeat(usize::from(*n % 5000))),
            Piece::Raw(raw) => out.push_str(raw),
        }
    }
    out
}

const SECRET: &[u8] = b"outside the home\n";

struct Fixture {
    _dir: tempfile::TempDir,
    /// `<tmp>/data`: the data root, holding only `home`.
    data: PathBuf,
    /// `<tmp>/data/home`: the user's home, canonical.
    home: PathBuf,
    /// `<tmp>/outside`: holds only `secret.txt`.
    outside: PathBuf,
    base: PathBuf,
    runtime: tokio::runtime::Runtime,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let dir = tempfile::tempdir().expect("temporary directory");
    let base = dir.path().canonicalize().expect("canonical temp dir");
    let data = base.join("data");
    let home = data.join("home");
    let outside = base.join("outside");
    std::fs::create_dir_all(&home).expect("home");
    std::fs::create_dir_all(&outside).expect("outside");
    std::fs::write(outside.join("secret.txt"), SECRET).expect("secret");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    Fixture {
        _dir: dir,
        data,
        home,
        outside,
        base,
        runtime,
    }
});

/// Lays out the home afresh: a directory, a file and the symlinks.
fn reset_home(fixture: &Fixture) {
    let home = &fixture.home;
    std::fs::remove_dir_all(home).expect("clear home");
    std::fs::create_dir_all(home.join("sub/deeper")).expect("sub");
    std::fs::write(home.join("sub/file.txt"), b"inside").expect("file");
    std::os::unix::fs::symlink("../../outside", home.join("escape")).expect("escape");
    std::os::unix::fs::symlink("/", home.join("absolute")).expect("absolute");
    std::os::unix::fs::symlink("..", home.join("up")).expect("up");
    std::os::unix::fs::symlink("sub", home.join("inner")).expect("inner");
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn check_virtual(path: &VirtualPath) {
    let shown = path.to_string();
    assert!(shown.starts_with('/'), "{shown:?}");
    if !path.is_root() {
        assert!(
            shown[1..].split('/').all(|c| !matches!(c, "" | "." | "..")),
            "{shown:?}"
        );
    }
    let relative = path.relative();
    assert!(!relative.starts_with('/'), "{relative:?}");
    assert!(relative.split('/').all(|c| c != ".."), "{relative:?}");
    assert_eq!(VirtualPath::root().resolve(&shown).as_ref(), Ok(path));
}

/// `UserFs` reached `path`: the kernel's own resolution of it must stay in the home.
fn check_reached(fixture: &Fixture, path: &VirtualPath) {
    let joined = fixture.home.join(path.relative());
    if let Ok(real) = joined.canonicalize() {
        assert!(
            real.starts_with(&fixture.home),
            "{path} reached {} outside the home",
            real.display()
        );
    }
}

async fn run(fixture: &Fixture, fs: &UserFs, ops: &[Op]) {
    let mut cwd = VirtualPath::root();
    for op in ops.iter().take(16) {
        let resolve = |pieces: &[Piece]| {
            let path = cwd.resolve(&text(pieces)).ok()?;
            check_virtual(&path);
            Some(path)
        };
        match op {
            Op::Cd(p) => {
                if let Some(path) = resolve(p)
                    && fs.stat(&path, true).await.is_ok()
                {
                    check_reached(fixture, &path);
                    cwd = path;
                }
            }
            Op::Stat(p, follow) => {
                if let Some(path) = resolve(p)
                    && fs.stat(&path, *follow).await.is_ok()
                    && *follow
                {
                    check_reached(fixture, &path);
                }
            }
            Op::List(p) => {
                if let Some(path) = resolve(p)
                    && fs.list(&path, 100_000).await.is_ok()
                {
                    check_reached(fixture, &path);
                }
            }
            Op::Mkdir(p) => {
                if let Some(path) = resolve(p)
                    && fs.create_dir(&path).await.is_ok()
                {
                    check_reached(fixture, &path);
                }
            }
            Op::Create(p, atomic) => {
                if let Some(path) = resolve(p) {
                    let how = OpenForWrite {
                        create: true,
                        truncate: true,
                        atomic: *atomic,
                        ..OpenForWrite::default()
                    };
                    if let Ok(opened) = fs.open_write(&path, how).await {
                        drop(opened.file);
                        match opened.temp_name {
                            Some(temp) => {
                                if fs
                                    .commit_temp(temp, &path, Replace::Never, opened.charge)
                                    .await
                                    .is_ok()
                                {
                                    check_reached(fixture, &path);
                                }
                            }
                            None => check_reached(fixture, &path),
                        }
                    }
                }
            }
            Op::Remove(p) => {
                if let Some(path) = resolve(p) {
                    let _ = fs.remove_file(&path).await;
                }
            }
            Op::Rmdir(p) => {
                if let Some(path) = resolve(p) {
                    let _ = fs.remove_dir(&path).await;
                }
            }
            Op::Rename(from, to) => {
                // A rename does not follow the last component (renaming the `escape` symlink
                // is fine): the directory it lands in must be inside. (Where it landed cannot
                // always be looked up again: `inner` renamed to `inner/x` moved the symlink
                // its own target path went through; the checks after the run still cover it.)
                if let (Some(from), Some(to)) = (resolve(from), resolve(to))
                    && fs.rename(&from, &to, Replace::Never).await.is_ok()
                {
                    check_reached(fixture, &to.parent());
                }
            }
            Op::ReadLink(p) => {
                if let Some(path) = resolve(p) {
                    let _ = fs.read_link(&path).await;
                }
            }
            Op::Read(p) => {
                if let Some(path) = resolve(p)
                    && let Ok(file) = fs.open_read(&path).await
                {
                    check_reached(fixture, &path);
                    let mut content = Vec::new();
                    let _ = std::io::Read::read_to_end(&mut &file, &mut content);
                    assert_ne!(content, SECRET, "{path} read the file outside the home");
                }
            }
        }
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let fixture = &*FIXTURE;
    reset_home(fixture);
    fixture.runtime.block_on(async {
        let fs = UserFs::open(
            fixture.data.to_string_lossy().into_owned(),
            "home".to_string(),
            sluice_server::filework::UserWork::unshared(4),
        )
        .await
        .expect("open home");
        run(fixture, &fs, &ops).await;
    });
    assert_eq!(
        names(&fixture.base),
        ["data", "outside"],
        "created next to the data root"
    );
    assert_eq!(names(&fixture.data), ["home"], "created next to the home");
    assert_eq!(
        names(&fixture.outside),
        ["secret.txt"],
        "changed outside the home"
    );
    assert_eq!(
        std::fs::read(fixture.outside.join("secret.txt"))
            .ok()
            .as_deref(),
        Some(SECRET),
        "changed the file outside the home"
    );
    assert!(
        std::fs::symlink_metadata(&fixture.home).is_ok_and(|m| m.is_dir()),
        "the home itself was replaced"
    );
});
