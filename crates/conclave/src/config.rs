//! Where `conclave server`'s settings come from: a flag, else its environment variable, else
//! the key of the same name in the TOML file given by `--config` (or `CONCLAVE_CONFIG`), else
//! the default.
//!
//! The settings are defined once, as [`ServerArgs`] (name, environment variable, default, help).
//! The file is read before the flags are parsed and each of its keys becomes the setting's
//! environment variable unless that is set already, so clap's own precedence (flag over
//! environment over default) gives the whole order. A key that names no setting is an error, as
//! is a value that is not a string, an integer, a float or a boolean.
//! [`check`] (`--check-config`) prints every setting with where it came from;
//! [`reference`] writes the table in `docs/configuration.md`.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::OnceLock;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, Command};

use crate::server::ServerArgs;

/// The settings' environment variables the file set, and the file.
struct FromFile {
    path: PathBuf,
    variables: Vec<String>,
}

static FROM_FILE: OnceLock<FromFile> = OnceLock::new();
static SERVER_MATCHES: OnceLock<ArgMatches> = OnceLock::new();

/// The settings as clap knows them.
fn settings() -> Command {
    ServerArgs::augment_args(Command::new("server"))
}

/// Settings that belong on a command line only.
fn file_key_allowed(id: &str) -> bool {
    !matches!(id, "config" | "check_config" | "help")
}

/// Reads the `--config` file named in `argv` (the whole command line) or by `CONCLAVE_CONFIG`,
/// if any, and sets the environment variable of each of its settings that is not set already.
/// Call before any thread starts.
pub fn apply_file(argv: &[OsString]) -> Result<(), String> {
    let Some(server) = argv.iter().position(|a| a == "server") else {
        return Ok(());
    };
    let mut path = std::env::var_os("CONCLAVE_CONFIG").map(PathBuf::from);
    let mut rest = argv[server + 1..].iter();
    while let Some(arg) = rest.next() {
        let arg = arg.to_string_lossy();
        if arg == "--" {
            break;
        }
        if arg == "--config" {
            path = rest.next().map(PathBuf::from);
        } else if let Some(value) = arg.strip_prefix("--config=") {
            path = Some(PathBuf::from(value));
        }
    }
    let Some(path) = path else {
        return Ok(());
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read the config file {}: {e}", path.display()))?;
    let variables = variables_of(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut set = Vec::new();
    for (variable, value) in variables {
        if std::env::var_os(&variable).is_none() {
            // Single-threaded still: nothing else reads the environment meanwhile.
            std::env::set_var(&variable, value);
            set.push(variable);
        }
    }
    let _ = FROM_FILE.set(FromFile {
        path,
        variables: set,
    });
    Ok(())
}

/// Each key of a config file's text as (environment variable, value).
fn variables_of(text: &str) -> Result<BTreeMap<String, String>, String> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
    let command = settings();
    let mut variables = BTreeMap::new();
    for (key, value) in table {
        let name = key.replace('_', "-");
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some(name.as_str()) && file_key_allowed(a.get_id().as_str()))
            .ok_or_else(|| {
                format!("unknown key {key:?} (the keys are the flags of `conclave server --help`)")
            })?;
        let variable = arg
            .get_env()
            .ok_or_else(|| format!("{key:?} cannot be set in a file"))?
            .to_string_lossy()
            .into_owned();
        let value = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            // A switch is off unless given: `false` leaves it unset, as if the key were absent
            // (an environment variable counts as given, even when false).
            toml::Value::Boolean(false) => continue,
            toml::Value::Boolean(true) => "true".to_string(),
            other => {
                return Err(format!(
                    "{key:?} must be a string, a number or a boolean, not {}",
                    other.type_str()
                ))
            }
        };
        variables.insert(variable, value);
    }
    Ok(variables)
}

/// Keeps the parsed `server` command line, for [`check`] to say where each setting came from.
pub fn remember(matches: &ArgMatches) {
    if let Some(("server", server)) = matches.subcommand() {
        let _ = SERVER_MATCHES.set(server.clone());
    }
}

/// `--check-config`: prints every setting and its source, then whether they are valid.
pub fn check<T>(args: &ServerArgs, checked: anyhow::Result<T>) -> ExitCode {
    let _ = args;
    let command = settings();
    let from_file = FROM_FILE.get();
    println!("# conclave server settings (flag > environment > file > default)");
    if let Some(file) = from_file {
        println!("# file: {}", file.path.display());
    }
    let matches = SERVER_MATCHES.get();
    for arg in command.get_arguments() {
        let id = arg.get_id().as_str();
        if !file_key_allowed(id) || arg.is_hide_set() {
            continue;
        }
        let Some(long) = arg.get_long() else { continue };
        let source = matches.and_then(|m| m.value_source(id));
        let raw: Option<String> = matches.and_then(|m| m.get_raw(id)).map(|values| {
            values
                .map(|v| v.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(",")
        });
        let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
        let source = match source {
            Some(ValueSource::CommandLine) => "flag".to_string(),
            Some(ValueSource::EnvVariable) => match (&env, from_file) {
                (Some(env), Some(file)) if file.variables.contains(env) => "file".to_string(),
                (Some(env), _) => format!("environment {env}"),
                (None, _) => "environment".to_string(),
            },
            Some(ValueSource::DefaultValue) => "default".to_string(),
            _ => "unset".to_string(),
        };
        let shown = match raw {
            None => "(none)".to_string(),
            Some(_) if arg.is_hide_env_values_set() => "<redacted>".to_string(),
            Some(value) => format!("{value:?}"),
        };
        println!("{long:<20} = {shown:<40} # {source}");
    }
    match checked {
        Ok(_) => {
            println!("# the settings are valid");
            ExitCode::SUCCESS
        }
        Err(error) => {
            println!("# the settings are not valid: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// The settings as a Markdown table: file key, flag, environment variable, default, meaning.
pub fn reference() -> String {
    let mut out = String::from(
        "| file key | flag | environment | default | meaning |\n|---|---|---|---|---|\n",
    );
    for arg in settings().get_arguments() {
        if arg.is_hide_set() || arg.get_id() == "help" {
            continue;
        }
        let Some(long) = arg.get_long() else { continue };
        let key = if file_key_allowed(arg.get_id().as_str()) {
            format!("`{long}`")
        } else {
            "-".to_string()
        };
        let env = arg
            .get_env()
            .map_or("-".to_string(), |e| format!("`{}`", e.to_string_lossy()));
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|d| d.to_string_lossy().into_owned())
            .collect();
        let default = if !arg.get_action().takes_values() {
            "off".to_string()
        } else if defaults.is_empty() {
            "-".to_string()
        } else {
            format!("`{}`", defaults.join(","))
        };
        let help = arg
            .get_long_help()
            .or(arg.get_help())
            .map(|h| {
                h.to_string()
                    .replace('\n', " ")
                    .replace('|', "\\|")
                    .replace('<', "&lt;")
            })
            .unwrap_or_default();
        out.push_str(&format!(
            "| {key} | `--{long}` | {env} | {default} | {help} |\n"
        ));
    }
    out
}

/// A size as Redis's configuration writes it: bytes, or a number with k, kb, m, mb, g or gb
/// (`32mb`).
pub fn parse_size(text: &str) -> Result<usize, String> {
    let lower = text.to_ascii_lowercase();
    let digits = lower.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit: usize = match &lower[digits.len()..] {
        "" | "b" => 1,
        "k" => 1000,
        "kb" => 1024,
        "m" => 1000 * 1000,
        "mb" => 1024 * 1024,
        "g" => 1000 * 1000 * 1000,
        "gb" => 1024 * 1024 * 1024,
        other => return Err(format!("unknown size unit {other:?} in {text:?}")),
    };
    digits
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .ok_or_else(|| format!("not a size: {text:?}"))
}

/// The pub/sub output-buffer limits as Redis's `client-output-buffer-limit pubsub` takes them:
/// `<hard> <soft> <seconds>` (`32mb 8mb 60`); the other limits keep their defaults.
pub fn parse_output_buffer_limit(text: &str) -> Result<conclave_pubsub::Limits, String> {
    let parts: Vec<&str> = text.split_whitespace().collect();
    let [hard, soft, seconds] = parts.as_slice() else {
        return Err(format!(
            "expected <hard> <soft> <seconds> (as Redis's \"32mb 8mb 60\"), got {text:?}"
        ));
    };
    let seconds: u64 = seconds
        .parse()
        .map_err(|_| format!("the soft limit's seconds must be a whole number, got {seconds:?}"))?;
    Ok(conclave_pubsub::Limits {
        max_pending_bytes: parse_size(hard)?,
        soft_pending_bytes: parse_size(soft)?,
        soft_pending_for: std::time::Duration::from_secs(seconds),
        ..conclave_pubsub::Limits::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_key_becomes_its_settings_environment_variable() {
        let variables = variables_of(
            "listen = \"10.0.0.1:7000\"\nheartbeat-ms = 40\njoin = true\nresp_password = \"x\"\n\
             id-from-hostname = false\n",
        )
        .expect("valid");
        assert!(!variables.contains_key("CONCLAVE_ID_FROM_HOSTNAME"));
        assert_eq!(variables["CONCLAVE_LISTEN"], "10.0.0.1:7000");
        assert_eq!(variables["CONCLAVE_HEARTBEAT_MS"], "40");
        assert_eq!(variables["CONCLAVE_JOIN"], "true");
        assert_eq!(variables["CONCLAVE_RESP_PASSWORD"], "x");
    }

    #[test]
    fn an_unknown_key_or_a_table_is_an_error() {
        let unknown = variables_of("listne = \"10.0.0.1:7000\"\n").unwrap_err();
        assert!(unknown.contains("unknown key \"listne\""), "{unknown}");
        let table = variables_of("[resp]\nport = 1\n").unwrap_err();
        assert!(
            table.contains("unknown key \"resp\"") || table.contains("table"),
            "{table}"
        );
        let nested = variables_of("listen = [\"a\"]\n").unwrap_err();
        assert!(nested.contains("must be a string"), "{nested}");
        let command_line_only = variables_of("check-config = true\n").unwrap_err();
        assert!(
            command_line_only.contains("unknown key"),
            "{command_line_only}"
        );
        let syntax = variables_of("listen = \n").unwrap_err();
        assert!(!syntax.is_empty());
    }

    #[test]
    fn output_buffer_limits_read_as_redis_writes_them() {
        let limits = parse_output_buffer_limit("32mb 8mb 60").unwrap();
        assert_eq!(
            limits,
            conclave_pubsub::Limits::default(),
            "the default is Redis's pubsub class"
        );
        assert_eq!(limits.output_buffer(), "33554432 8388608 60");
        let limits = parse_output_buffer_limit("1gb 64kb 5").unwrap();
        assert_eq!(
            (limits.max_pending_bytes, limits.soft_pending_bytes),
            (1 << 30, 64 * 1024)
        );
        assert_eq!(limits.soft_pending_for, std::time::Duration::from_secs(5));
        assert_eq!(
            parse_output_buffer_limit("0 0 0").unwrap().output_buffer(),
            "0 0 0"
        );
        for bad in [
            "32mb 8mb",
            "32mb 8mb 60 1",
            "32xb 8mb 60",
            "32mb 8mb -1",
            "mb 1 1",
        ] {
            assert!(parse_output_buffer_limit(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_size("128mb"), Ok(128 << 20));
        assert_eq!(parse_size("5k"), Ok(5000));
        assert_eq!(parse_size("77"), Ok(77));
    }
}
