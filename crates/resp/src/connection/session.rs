//! The connection's own commands: the handshake (HELLO), authentication (AUTH, ACL WHOAMI /
//! USERS), CLIENT, PING, RESET; and which permission each command needs of the user.

use conclave_access::{AuthError, Directory, Permission, Role};

use super::Connection;
use crate::introspection;
use crate::plan;
use crate::protocol::{Reply, Version};
use crate::table::Spec;

/// Who a connection runs as.
pub(super) struct Login {
    user: String,
    role: Role,
    /// The users' generation the role was read at: a reloaded users file may change it.
    generation: u64,
}

impl Login {
    /// What a connection starts as: the default user, if it needs no password.
    pub(super) fn anonymous(users: &Directory) -> Option<Login> {
        let generation = users.generation();
        users.current().anonymous().map(|user| Login {
            user: user.name.clone(),
            role: user.role,
            generation,
        })
    }
}

/// What a command needs of the connection's user; None: anything a connection may do once
/// authenticated (the handshake, PING, MULTI, CLIENT, COMMAND, ACL WHOAMI). Keyspace commands
/// follow the table's flags (`write` needs write, everything else read); a script's own
/// commands are checked when it runs (a read-only user may run a script that only reads).
pub(super) fn permission(spec: &Spec, args: &[Vec<u8>]) -> Option<Permission> {
    match spec.name {
        "ping" | "echo" | "hello" | "auth" | "select" | "client" | "quit" | "reset" | "multi"
        | "exec" | "discard" | "unwatch" | "command" => None,
        "acl" if args[0].eq_ignore_ascii_case(b"WHOAMI") => None,
        "acl" | "config" => Some(Permission::Admin),
        "publish" => Some(Permission::Write),
        "script" if !args[0].eq_ignore_ascii_case(b"EXISTS") => Some(Permission::Write),
        _ if spec.flags.contains(&"write") => Some(Permission::Write),
        _ => Some(Permission::Read),
    }
}

impl Connection {
    /// Why this connection may not run `spec` now (NOAUTH, NOPERM), if it may not.
    pub(super) fn refusal(&mut self, spec: &Spec, args: &[Vec<u8>]) -> Option<Reply> {
        if !self.follow_users() {
            return Some(Reply::error(
                "NOAUTH this connection's user was removed from the users file",
            ));
        }
        let Some(login) = &self.login else {
            return (!matches!(spec.name, "auth" | "hello" | "quit" | "reset"))
                .then(|| Reply::error("NOAUTH Authentication required."));
        };
        match permission(spec, args) {
            Some(needed) if !login.role.allows(needed) => Some(Reply::error(format!(
                "NOPERM User {} has no permissions to run the '{}' command",
                login.user, spec.name
            ))),
            _ => None,
        }
    }

    /// Whether the connection's user may write (a pipeline's writes are grouped only then).
    pub(super) fn may_write(&self) -> bool {
        self.login
            .as_ref()
            .is_some_and(|login| login.role.allows(Permission::Write))
    }

    /// Follows a reload of the users file: the connection's user gets its new role. False if
    /// the user is gone, and the connection is closing (as Redis closes the connections of a
    /// deleted user).
    pub(super) fn follow_users(&mut self) -> bool {
        let users = &self.shared.options.users;
        let generation = users.generation();
        let Some(login) = &mut self.login else {
            return true;
        };
        if login.generation == generation {
            return true;
        }
        match users.current().get(&login.user) {
            Some(user) => {
                login.role = user.role;
                login.generation = generation;
                true
            }
            None => {
                tracing::info!(peer = %self.peer, user = %login.user, "RESP connection closed: its user was removed");
                self.login = None;
                self.closing = true;
                false
            }
        }
    }

    /// AUTH / HELLO AUTH: on success the connection runs as `user` (the default user if None);
    /// on failure it stays as it was.
    fn log_in(&mut self, user: Option<&[u8]>, password: &[u8]) -> Result<(), Reply> {
        let directory = &self.shared.options.users;
        let generation = directory.generation();
        let users = directory.current();
        match users.authenticate(user, password) {
            Ok(user) => {
                self.login = Some(Login {
                    user: user.name.clone(),
                    role: user.role,
                    generation,
                });
                Ok(())
            }
            Err(AuthError::DefaultHasNoPassword) => Err(Reply::error("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?")),
            Err(AuthError::WrongPass) => {
                // The user's name, never the password.
                // Escaped and cut short: the name is the client's, unchecked.
                let name = user.unwrap_or(b"default");
                let name = String::from_utf8_lossy(&name[..name.len().min(64)]).into_owned();
                tracing::info!(peer = %self.peer, user = ?name, "RESP authentication failed");
                Err(Reply::error(
                    "WRONGPASS invalid username-password pair or user is disabled.",
                ))
            }
        }
    }

    /// ACL WHOAMI and USERS.
    pub(super) fn acl(&mut self, args: &[Vec<u8>]) -> Reply {
        let sub = args[0].to_ascii_uppercase();
        match (sub.as_slice(), &args[1..]) {
            (b"WHOAMI", []) => match &self.login {
                Some(login) => Reply::bulk(login.user.clone()),
                None => Reply::error("NOAUTH Authentication required."),
            },
            (b"USERS", []) => Reply::Array(
                self.shared
                    .options
                    .users
                    .current()
                    .iter()
                    .map(|user| Reply::bulk(user.name.clone()))
                    .collect(),
            ),
            _ => Reply::error(format!(
                "ERR unknown subcommand or wrong number of arguments for '{}'. Conclave knows ACL WHOAMI and ACL USERS; users are configured in the users file.",
                String::from_utf8_lossy(&args[0])
            )),
        }
    }

    pub(super) fn ping(&self, args: &[Vec<u8>]) -> Reply {
        if self.version == Version::Resp2 && self.subscribed() {
            let message = args.first().cloned().unwrap_or_default();
            return Reply::Array(vec![Reply::bulk("pong"), Reply::bulk(message)]);
        }
        match args {
            [] => Reply::status("PONG"),
            [message] => Reply::bulk(message.clone()),
            _ => Reply::error("ERR wrong number of arguments for 'ping' command"),
        }
    }

    pub(super) fn hello(&mut self, args: &[Vec<u8>]) -> Reply {
        let mut protocol = match self.version {
            Version::Resp2 => 2,
            Version::Resp3 => 3,
        };
        if let Some(requested) = args.first() {
            match plan::integer(requested) {
                Ok(v @ (2 | 3)) => protocol = v,
                Ok(_) => return Reply::error("NOPROTO unsupported protocol version"),
                Err(_) => {
                    return Reply::error("ERR Protocol version is not an integer or out of range")
                }
            }
        }
        let mut options = args.iter().skip(1);
        let mut name = None;
        // Every option is read before the login is tried (a bad option changes nothing).
        let mut credentials = None;
        while let Some(option) = options.next() {
            match option.to_ascii_uppercase().as_slice() {
                b"AUTH" => {
                    let (Some(user), Some(password)) = (options.next(), options.next()) else {
                        return Reply::error("ERR Syntax error in HELLO option 'auth'");
                    };
                    credentials = Some((user, password));
                }
                b"SETNAME" => match options.next() {
                    Some(n) => name = Some(n.clone()),
                    None => return Reply::error("ERR Syntax error in HELLO option 'setname'"),
                },
                _ => {
                    return Reply::error(format!(
                        "ERR Syntax error in HELLO option '{}'",
                        String::from_utf8_lossy(option)
                    ))
                }
            }
        }
        if let Some((user, password)) = credentials {
            if let Err(error) = self.log_in(Some(user), password) {
                return error;
            }
        }
        if self.login.is_none() {
            return Reply::error("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time");
        }
        if name.is_some() {
            self.name = name;
        }
        self.version = if protocol == 3 {
            Version::Resp3
        } else {
            Version::Resp2
        };
        introspection::hello(self.id, protocol)
    }

    pub(super) fn auth(&mut self, args: &[Vec<u8>]) -> Reply {
        match args {
            [password] => self.log_in(None, password),
            [user, password] => self.log_in(Some(user), password),
            _ => Err(Reply::error("ERR syntax error")),
        }
        .map_or_else(|e| e, |()| Reply::ok())
    }

    pub(super) fn client(&mut self, args: &[Vec<u8>]) -> Reply {
        let sub = args[0].to_ascii_uppercase();
        match (sub.as_slice(), &args[1..]) {
            (b"ID", []) => Reply::Integer(self.id as i64),
            (b"GETNAME", []) => self.name.clone().map_or(Reply::Nil, Reply::Bulk),
            (b"SETNAME", [name]) => {
                if name.iter().any(|b| *b <= b' ' || *b > b'~') {
                    return Reply::error(
                        "ERR Client names cannot contain spaces, newlines or special characters.",
                    );
                }
                self.name = (!name.is_empty()).then(|| name.clone());
                Reply::ok()
            }
            (b"SETINFO", [attribute, _]) => match attribute.to_ascii_uppercase().as_slice() {
                b"LIB-NAME" | b"LIB-VER" => Reply::ok(),
                _ => Reply::error(format!(
                    "ERR Unrecognized option '{}'",
                    String::from_utf8_lossy(attribute)
                )),
            },
            (b"INFO", []) => Reply::bulk(format!(
                "id={} addr={} name={} db=0 user={} resp={}\n",
                self.id,
                self.peer,
                String::from_utf8_lossy(self.name.as_deref().unwrap_or_default()),
                self.login.as_ref().map_or("", |login| login.user.as_str()),
                if self.version == Version::Resp3 { 3 } else { 2 },
            )),
            (b"NO-EVICT" | b"NO-TOUCH", [_]) => Reply::ok(),
            _ => Reply::error(format!(
                "ERR unknown subcommand or wrong number of arguments for '{}'. Try CLIENT HELP.",
                String::from_utf8_lossy(&args[0])
            )),
        }
    }

    pub(super) fn reset(&mut self) {
        self.multi = None;
        self.watched.clear();
        self.subscriber = None;
        self.version = Version::Resp2;
        self.name = None;
        self.login = Login::anonymous(&self.shared.options.users);
    }
}
