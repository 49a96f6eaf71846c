//! Who may do what on a Conclave node: the users it knows, their roles, and how a password or
//! a bearer token is checked.
//!
//! Users come from a users file (TOML, `--users FILE`, read again when it changes) and from
//! `--resp-password`, which stays what it was: the `default` user's password. Each user has one
//! role:
//! - `read-only`: reads keys, subscribes, watches;
//! - `read-write`: also writes, publishes, takes leases and locks;
//! - `admin`: also changes membership, moves the leadership, reads the configuration.
//!
//! The `default` user is the one a RESP connection starts as, and what a gRPC call without
//! credentials runs as, if it needs no password:
//! - defined in the users file: as written there;
//! - otherwise, with `--resp-password`: an admin with that password;
//! - otherwise, without a users file: an admin without password (an open node, as a Redis
//!   without `requirepass`: `AUTH default <anything>` is accepted);
//! - otherwise there is no default user, and every client must authenticate.
//!
//! Passwords and tokens are kept as SHA-256 digests (as Redis's ACL does); the file may hold
//! either the secret or its digest. This crate decides nothing about requests: the front ends
//! (RESP, gRPC) say which [`Permission`] a request needs and ask [`Role::allows`].

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// The user every connection starts as (Redis's name).
pub const DEFAULT_USER: &str = "default";
/// Shortest bearer token accepted: a token is a machine's secret, never a word.
pub const MIN_TOKEN_CHARS: usize = 16;

/// What a user may do; each role includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    ReadOnly,
    ReadWrite,
    Admin,
}

/// What a request needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permission {
    /// Reads of keys, rooms, leases, watches, subscriptions, status.
    Read,
    /// Writes, publishes, leases and locks.
    Write,
    /// Membership, leadership, configuration and user listings.
    Admin,
}

impl Role {
    pub fn allows(self, needed: Permission) -> bool {
        let least = match needed {
            Permission::Read => Role::ReadOnly,
            Permission::Write => Role::ReadWrite,
            Permission::Admin => Role::Admin,
        };
        self >= least
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::ReadOnly => "read-only",
            Role::ReadWrite => "read-write",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "read-only" => Ok(Role::ReadOnly),
            "read-write" => Ok(Role::ReadWrite),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role {other:?}: expected read-only, read-write or admin"
            )),
        }
    }
}

type Digest = [u8; 32];

fn sha256(secret: &[u8]) -> Digest {
    let digest = ring::digest::digest(&ring::digest::SHA256, secret);
    digest.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

/// Equal digests, in time that does not depend on where they differ.
fn same(a: &Digest, b: &Digest) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn parse_digest(hex: &str) -> Option<Digest> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut digest = [0u8; 32];
    for (i, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(digest)
}

/// The lower-case hex SHA-256 of `secret`: what a users file may hold instead of the secret.
pub fn digest_hex(secret: &[u8]) -> String {
    sha256(secret).iter().map(|b| format!("{b:02x}")).collect()
}

/// How a user proves who it is over AUTH.
#[derive(Clone, Debug)]
enum Password {
    /// Any password is accepted (Redis's `nopass`).
    Any,
    Sha256(Digest),
    /// No password: the user authenticates with a token only.
    Unset,
}

/// One user.
#[derive(Clone, Debug)]
pub struct User {
    pub name: String,
    pub role: Role,
    password: Password,
}

impl User {
    /// Whether the user needs no password (connections may start as it).
    pub fn is_open(&self) -> bool {
        matches!(self.password, Password::Any)
    }
}

/// Why AUTH failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthError {
    /// Unknown user, wrong password, or a user without one: one answer for all, so a client
    /// learns nothing about which users exist.
    WrongPass,
    /// `AUTH <password>` while the default user has no password (Redis answers this with an
    /// error of its own).
    DefaultHasNoPassword,
}

/// The users a node knows at one moment.
#[derive(Debug)]
pub struct Users {
    users: BTreeMap<String, User>,
    /// Token digest -> user name.
    tokens: HashMap<Digest, String>,
}

/// One `[[user]]` table of a users file.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct UserEntry {
    name: String,
    role: String,
    password: Option<String>,
    password_sha256: Option<String>,
    #[serde(default)]
    nopass: bool,
    #[serde(default)]
    tokens: Vec<String>,
    #[serde(default)]
    token_sha256: Vec<String>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default)]
    user: Vec<UserEntry>,
}

impl Users {
    /// The users of a node: those of `file` (a users file's text, if the node has one) and the
    /// default user as the module doc says.
    pub fn build(file: Option<&str>, default_password: Option<&str>) -> Result<Users, String> {
        let mut users = Users {
            users: BTreeMap::new(),
            tokens: HashMap::new(),
        };
        if let Some(text) = file {
            // toml's own message quotes the line, which may hold a password: only the line
            // number and what is wrong.
            let parsed: UsersFile = toml::from_str(text).map_err(|e| {
                let line = e
                    .span()
                    .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
                match line {
                    Some(line) => format!("line {line}: {}", e.message()),
                    None => e.message().to_string(),
                }
            })?;
            if parsed.user.is_empty() {
                // As likely a file caught mid-write as a wish to lock everyone out.
                return Err("the users file holds no [[user]]".into());
            }
            for entry in parsed.user {
                users.add(entry)?;
            }
        }
        match (users.users.get(DEFAULT_USER), default_password) {
            (Some(_), Some(_)) => {
                return Err(
                    "the users file defines the default user and --resp-password sets its password: use one"
                        .into(),
                )
            }
            (Some(_), None) => {}
            (None, Some(password)) => {
                users.users.insert(
                    DEFAULT_USER.into(),
                    User {
                        name: DEFAULT_USER.into(),
                        role: Role::Admin,
                        password: Password::Sha256(sha256(password.as_bytes())),
                    },
                );
            }
            (None, None) if file.is_none() => {
                users.users.insert(
                    DEFAULT_USER.into(),
                    User {
                        name: DEFAULT_USER.into(),
                        role: Role::Admin,
                        password: Password::Any,
                    },
                );
            }
            (None, None) => {}
        }
        Ok(users)
    }

    fn add(&mut self, entry: UserEntry) -> Result<(), String> {
        let name = entry.name;
        let fail = |what: String| Err(format!("user {name:?}: {what}"));
        if name.is_empty()
            || name.len() > 128
            || name.bytes().any(|b| b <= b' ' || b == 0x7f || b == b':')
        {
            return fail(
                "a name is 1 to 128 characters, without spaces, colons or control characters"
                    .into(),
            );
        }
        if self.users.contains_key(&name) {
            return fail("defined twice".into());
        }
        let role: Role = match entry.role.parse() {
            Ok(role) => role,
            Err(e) => return fail(e),
        };
        let password = match (entry.password, entry.password_sha256, entry.nopass) {
            (None, None, false) => Password::Unset,
            (None, None, true) => Password::Any,
            (Some(password), None, false) => Password::Sha256(sha256(password.as_bytes())),
            (None, Some(hex), false) => match parse_digest(&hex) {
                Some(digest) => Password::Sha256(digest),
                None => return fail("password-sha256 is not 64 hex digits".into()),
            },
            _ => return fail("give one of password, password-sha256 and nopass".into()),
        };
        let mut digests = Vec::new();
        for token in &entry.tokens {
            if token.chars().count() < MIN_TOKEN_CHARS {
                return fail(format!(
                    "a token must be at least {MIN_TOKEN_CHARS} characters"
                ));
            }
            digests.push(sha256(token.as_bytes()));
        }
        for hex in &entry.token_sha256 {
            match parse_digest(hex) {
                Some(digest) => digests.push(digest),
                None => return fail("a token-sha256 is not 64 hex digits".into()),
            }
        }
        for digest in digests {
            if self.tokens.insert(digest, name.clone()).is_some() {
                return fail("a token is given to more than one user".into());
            }
        }
        self.users.insert(
            name.clone(),
            User {
                name,
                role,
                password,
            },
        );
        Ok(())
    }

    /// Checks AUTH `user` `password`; `user` None is the one-argument form (the default user).
    pub fn authenticate(&self, user: Option<&[u8]>, password: &[u8]) -> Result<&User, AuthError> {
        let name = user.unwrap_or(DEFAULT_USER.as_bytes());
        let found = std::str::from_utf8(name)
            .ok()
            .and_then(|name| self.users.get(name));
        match found {
            Some(u) if user.is_none() && matches!(u.password, Password::Any) => {
                Err(AuthError::DefaultHasNoPassword)
            }
            Some(u) => {
                // Hashed whoever asks: the time taken does not tell which users exist.
                let given = sha256(password);
                match &u.password {
                    Password::Any => Ok(u),
                    Password::Sha256(expected) if same(expected, &given) => Ok(u),
                    _ => Err(AuthError::WrongPass),
                }
            }
            None => {
                let _ = sha256(password);
                Err(AuthError::WrongPass)
            }
        }
    }

    /// The user a bearer token belongs to.
    pub fn by_token(&self, token: &[u8]) -> Option<&User> {
        let name = self.tokens.get(&sha256(token))?;
        self.users.get(name)
    }

    /// The user a connection or call without credentials runs as: the default user, if it
    /// needs no password.
    pub fn anonymous(&self) -> Option<&User> {
        self.users.get(DEFAULT_USER).filter(|u| u.is_open())
    }

    pub fn get(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    /// Every user, by name.
    pub fn iter(&self) -> impl Iterator<Item = &User> {
        self.users.values()
    }
}

/// A node's users, following its users file: [`Directory::reload_if_changed`] reads the file
/// again and takes it when its content changed (so a copy that keeps the old modification time
/// is seen too); a file that cannot be used keeps the users in use. Replace the file by writing
/// a new one and renaming it over the old: a file caught half-written may parse.
pub struct Directory {
    file: Option<PathBuf>,
    /// `--resp-password`, needed again at every reload.
    default_password: Option<String>,
    /// The users, and the digest of the file content they were read from (or last tried).
    current: RwLock<(Arc<Users>, Option<Digest>)>,
    /// Bumped at every reload: connections that remember who they are check it cheaply.
    generation: AtomicU64,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the default password.
        f.debug_struct("Directory")
            .field("file", &self.file)
            .field("generation", &self.generation())
            .finish()
    }
}

fn read_file(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the users file {}: {e}", path.display()))
}

impl Directory {
    /// The users of `file` (if any) and the default user; fails with what is wrong.
    pub fn load(
        file: Option<PathBuf>,
        default_password: Option<String>,
    ) -> Result<Directory, String> {
        let text = file.as_deref().map(read_file).transpose()?;
        let users = Self::build(
            file.as_deref(),
            text.as_deref(),
            default_password.as_deref(),
        )?;
        Ok(Directory {
            current: RwLock::new((Arc::new(users), text.map(|t| sha256(t.as_bytes())))),
            file,
            default_password,
            generation: AtomicU64::new(0),
        })
    }

    /// A directory of fixed users (no file to follow).
    pub fn fixed(users: Users) -> Directory {
        Directory {
            file: None,
            default_password: None,
            current: RwLock::new((Arc::new(users), None)),
            generation: AtomicU64::new(0),
        }
    }

    fn build(
        file: Option<&Path>,
        text: Option<&str>,
        default_password: Option<&str>,
    ) -> Result<Users, String> {
        Users::build(text, default_password).map_err(|e| match file {
            Some(path) => format!("{}: {e}", path.display()),
            None => e,
        })
    }

    pub fn current(&self) -> Arc<Users> {
        self.current.read().expect("users lock").0.clone()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The users file, if the node has one.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Reads the users file again; Ok(true) if its content changed and was taken. A content
    /// that does not load is reported once (Err), not at every call; a file that cannot be
    /// read at all is reported at every call until it can.
    pub fn reload_if_changed(&self) -> Result<bool, String> {
        let Some(path) = &self.file else {
            return Ok(false);
        };
        let text = read_file(path)?;
        let digest = sha256(text.as_bytes());
        if Some(digest) == self.current.read().expect("users lock").1 {
            return Ok(false);
        }
        let built = Self::build(Some(path), Some(&text), self.default_password.as_deref());
        let mut current = self.current.write().expect("users lock");
        current.1 = Some(digest);
        current.0 = Arc::new(built?);
        drop(current);
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
        [[user]]
        name = "ops"
        role = "admin"
        password = "ops-pass"
        tokens = ["ops-token-0123456789"]

        [[user]]
        name = "livekit"
        role = "read-write"
        password-sha256 = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"

        [[user]]
        name = "viewer"
        role = "read-only"
        token-sha256 = ["0000000000000000000000000000000000000000000000000000000000000000"]
    "#;

    #[test]
    fn roles_include_the_ones_below() {
        assert!(Role::Admin.allows(Permission::Write));
        assert!(Role::ReadWrite.allows(Permission::Read));
        assert!(!Role::ReadWrite.allows(Permission::Admin));
        assert!(!Role::ReadOnly.allows(Permission::Write));
        assert!(Role::ReadOnly.allows(Permission::Read));
    }

    #[test]
    fn passwords_in_clear_and_as_digests_both_authenticate() {
        let users = Users::build(Some(FILE), None).unwrap();
        assert_eq!(
            users.authenticate(Some(b"ops"), b"ops-pass").unwrap().role,
            Role::Admin
        );
        // sha256("password")
        let livekit = users.authenticate(Some(b"livekit"), b"password").unwrap();
        assert_eq!(livekit.role, Role::ReadWrite);
        assert_eq!(
            users.authenticate(Some(b"ops"), b"nope").unwrap_err(),
            AuthError::WrongPass
        );
        assert_eq!(
            users.authenticate(Some(b"ghost"), b"x").unwrap_err(),
            AuthError::WrongPass
        );
        // A token-only user has no password to give.
        assert_eq!(
            users.authenticate(Some(b"viewer"), b"").unwrap_err(),
            AuthError::WrongPass
        );
    }

    #[test]
    fn tokens_name_their_user() {
        let users = Users::build(Some(FILE), None).unwrap();
        assert_eq!(users.by_token(b"ops-token-0123456789").unwrap().name, "ops");
        assert!(users.by_token(b"ops-pass").is_none());
    }

    #[test]
    fn the_default_user_follows_the_file_and_the_resp_password() {
        // No file, no password: an open admin, and AUTH default <anything> is accepted.
        let open = Users::build(None, None).unwrap();
        assert_eq!(open.anonymous().unwrap().role, Role::Admin);
        assert!(open.authenticate(Some(b"default"), b"anything").is_ok());
        assert_eq!(
            open.authenticate(None, b"anything").unwrap_err(),
            AuthError::DefaultHasNoPassword
        );
        // --resp-password: the default user needs it.
        let password = Users::build(None, Some("s3cret")).unwrap();
        assert!(password.anonymous().is_none());
        assert!(password.authenticate(None, b"s3cret").is_ok());
        assert_eq!(
            password.authenticate(None, b"x").unwrap_err(),
            AuthError::WrongPass
        );
        // A users file without a default user: nobody is let in without credentials.
        let closed = Users::build(Some(FILE), None).unwrap();
        assert!(closed.anonymous().is_none());
        assert!(closed.get(DEFAULT_USER).is_none());
        assert_eq!(
            closed.authenticate(None, b"x").unwrap_err(),
            AuthError::WrongPass
        );
        // ...or one that defines it.
        let mine = "[[user]]\nname = \"default\"\nrole = \"read-only\"\nnopass = true\n";
        let mine = Users::build(Some(mine), None).unwrap();
        assert_eq!(mine.anonymous().unwrap().role, Role::ReadOnly);
        assert!(Users::build(
            Some("[[user]]\nname = \"default\"\nrole = \"admin\"\nnopass = true\n"),
            Some("x")
        )
        .is_err());
    }

    #[test]
    fn bad_files_are_refused_with_what_is_wrong() {
        let cases = [
            ("[[user]]\nname = \"a\"\nrole = \"root\"\n", "unknown role"),
            ("[[user]]\nname = \"a b\"\nrole = \"admin\"\n", "without spaces"),
            ("[[user]]\nname = \"a:b\"\nrole = \"admin\"\n", "colons"),
            ("", "holds no [[user]]"),
            ("[[user]]\nname = \"a\"\nrole = \"admin\"\npasword = \"x\"\n", "unknown field"),
            ("[[user]]\nname = \"a\"\nrole = \"admin\"\npassword = \"x\"\nnopass = true\n", "one of"),
            ("[[user]]\nname = \"a\"\nrole = \"admin\"\ntokens = [\"short\"]\n", "at least 16"),
            ("[[user]]\nname = \"a\"\nrole = \"admin\"\npassword-sha256 = \"abc\"\n", "64 hex"),
            ("[[user]]\nname = \"a\"\nrole = \"admin\"\n[[user]]\nname = \"a\"\nrole = \"admin\"\n", "twice"),
            (
                "[[user]]\nname = \"a\"\nrole = \"admin\"\ntokens = [\"same-token-0123456789\"]\n\
                 [[user]]\nname = \"b\"\nrole = \"admin\"\ntokens = [\"same-token-0123456789\"]\n",
                "more than one user",
            ),
        ];
        for (text, error) in cases {
            let got = Users::build(Some(text), None).unwrap_err();
            assert!(got.contains(error), "{text}: {got}");
        }
    }

    #[test]
    fn a_directory_follows_its_file_and_keeps_the_users_in_use_when_it_breaks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        std::fs::write(&path, FILE).unwrap();
        let directory = Directory::load(Some(path.clone()), None).unwrap();
        assert!(!directory.reload_if_changed().unwrap());
        // Taken by content: a copy that kept the old modification time is seen too.
        let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
        let rewrite = |text: &str| {
            std::fs::write(&path, text).unwrap();
            let file = std::fs::File::options().write(true).open(&path).unwrap();
            file.set_modified(modified).unwrap();
        };
        rewrite("[[user]]\nname = \"ops\"\nrole = \"read-only\"\npassword = \"p\"\n");
        assert!(directory.reload_if_changed().unwrap());
        assert_eq!(directory.generation(), 1);
        assert_eq!(directory.current().get("ops").unwrap().role, Role::ReadOnly);
        assert!(directory.current().get("livekit").is_none());
        rewrite("[[user]\n");
        assert!(directory.reload_if_changed().is_err());
        assert_eq!(directory.current().get("ops").unwrap().role, Role::ReadOnly);
        // Reported once, not at every poll.
        assert!(!directory.reload_if_changed().unwrap());
        // An empty file (one caught mid-write) is refused too.
        rewrite("");
        assert!(directory.reload_if_changed().is_err());
        assert!(directory.current().get("ops").is_some());
        // An unreadable file is reported, and read again once it can be.
        std::fs::remove_file(&path).unwrap();
        assert!(directory.reload_if_changed().is_err());
        rewrite(FILE);
        assert!(directory.reload_if_changed().unwrap());
        assert_eq!(directory.current().get("ops").unwrap().role, Role::Admin);
    }

    #[test]
    fn errors_in_the_file_never_quote_it() {
        let text = "[[user]]\nname = \"a\"\nrole = \"admin\"\npasword = \"hunter2-secret\"\n";
        let error = Users::build(Some(text), None).unwrap_err();
        assert!(!error.contains("hunter2"), "{error}");
        assert!(error.contains("line 4"), "{error}");
        let text = "[[user]]\nname = \"a\"\nrole = \"admin\"\npassword = hunter2-secret\n";
        let error = Users::build(Some(text), None).unwrap_err();
        assert!(!error.contains("hunter2"), "{error}");
    }

    #[test]
    fn digests_are_lower_case_hex_sha256() {
        assert_eq!(
            digest_hex(b"password"),
            "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"
        );
    }
}
