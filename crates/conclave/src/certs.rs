//! `conclave certs`: a cluster CA and the certificates it signs, for dev, compose and tests.
//!
//! A node certificate is valid for server and client authentication and names the hosts
//! (DNS names or IP addresses) peers and clients reach the node at; a client certificate is
//! valid for client authentication only, so it cannot be used for node-to-node calls. Keys are
//! ECDSA P-256. Production clusters may use their own CA instead: what a node checks is the
//! chain to the CA and, for peers, the server-authentication usage.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

#[derive(Args, Debug)]
pub struct CertsArgs {
    /// Where the CA and the certificates are kept.
    #[arg(long, default_value = "conclave-certs")]
    dir: PathBuf,
    #[command(subcommand)]
    command: CertsCommand,
}

#[derive(Subcommand, Debug)]
enum CertsCommand {
    /// Create the cluster's CA: ca.pem and ca-key.pem (keep the key private).
    Ca,
    /// Issue a node certificate NAME.pem and key NAME-key.pem, signed by the CA.
    Node {
        name: String,
        /// A DNS name or IP address the node is reached at (repeat for several; default:
        /// localhost and 127.0.0.1).
        #[arg(long = "host")]
        hosts: Vec<String>,
    },
    /// Issue a client certificate NAME.pem and key NAME-key.pem (client authentication only).
    Client { name: String },
    /// A CA and a node certificate for each of nodes 1..=N, made where missing and kept after
    /// (a new CA reissues them all): what the compose file's `certs` service runs.
    Cluster {
        /// How many nodes.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=99))]
        nodes: u64,
        /// Each node's host name, `{id}` standing for its id (`conclave-{id}`); its files are
        /// named after it. Without it they are n{id}.pem and n{id}-key.pem. Every certificate
        /// also names localhost and 127.0.0.1.
        #[arg(long)]
        host_template: Option<String>,
    },
}

/// How long issued certificates are valid.
const LEAF_DAYS: i64 = 825;
const CA_DAYS: i64 = 3650;
const CA_NAME: &str = "Conclave cluster CA";

pub fn run(args: CertsArgs) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    match args.command {
        CertsCommand::Ca => {
            let (cert, key) = (args.dir.join("ca.pem"), args.dir.join("ca-key.pem"));
            if cert.exists() || key.exists() {
                bail!(
                    "{} already holds a CA: remove it first to make another",
                    args.dir.display()
                );
            }
            let key_pair = KeyPair::generate().context("generating the CA key")?;
            let ca = ca_params()?
                .self_signed(&key_pair)
                .context("signing the CA")?;
            write(&cert, &ca.pem(), false)?;
            write(&key, &key_pair.serialize_pem(), true)?;
            println!("CA: {} (key {})", cert.display(), key.display());
        }
        CertsCommand::Node { name, hosts } => {
            let hosts = if hosts.is_empty() {
                vec!["localhost".to_string(), "127.0.0.1".to_string()]
            } else {
                hosts
            };
            issue(&args.dir, &name, hosts, true)?;
        }
        CertsCommand::Client { name } => issue(&args.dir, &name, vec![name.clone()], false)?,
        CertsCommand::Cluster {
            nodes,
            host_template,
        } => {
            let made = ensure_cluster_certs(&args.dir, nodes, host_template.as_deref())?;
            for (name, fresh) in made {
                let what = if fresh { "made" } else { "kept" };
                println!("{what} {}", args.dir.join(format!("{name}.pem")).display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A CA and node certificates for nodes 1..=`nodes` in `dir`, made where missing and kept
/// after; a CA made here reissues every node certificate (the old ones are not from it). Node
/// `id`'s files are named after `host_template` with `{id}` replaced (the host it is reached
/// at, besides localhost and 127.0.0.1), or `n{id}` without one. Returns each certificate's
/// name and whether it was made now; the CA comes first.
pub fn ensure_cluster_certs(
    dir: &Path,
    nodes: u64,
    host_template: Option<&str>,
) -> anyhow::Result<Vec<(String, bool)>> {
    if let Some(template) = host_template {
        anyhow::ensure!(
            template.contains("{id}"),
            "the host template {template:?} has no {{id}}: every node would get the same name"
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let new_ca = !dir.join("ca-key.pem").exists() || !dir.join("ca.pem").exists();
    if new_ca {
        let key_pair = KeyPair::generate().context("generating the CA key")?;
        let ca = ca_params()?
            .self_signed(&key_pair)
            .context("signing the CA")?;
        write(&dir.join("ca.pem"), &ca.pem(), false)?;
        write(&dir.join("ca-key.pem"), &key_pair.serialize_pem(), true)?;
    }
    let mut made = vec![("ca".to_string(), new_ca)];
    for id in 1..=nodes {
        let (name, mut hosts) = match host_template {
            Some(template) => {
                let host = template.replace("{id}", &id.to_string());
                (host.clone(), vec![host])
            }
            None => (format!("n{id}"), Vec::new()),
        };
        hosts.extend(["localhost".to_string(), "127.0.0.1".to_string()]);
        let present = dir.join(format!("{name}.pem")).exists()
            && dir.join(format!("{name}-key.pem")).exists();
        if new_ca || !present {
            issue_quietly(dir, &name, hosts, true)?;
        }
        made.push((name, new_ca || !present));
    }
    Ok(made)
}

fn ca_params() -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = rcgen::date_time_ymd(2025, 1, 1);
    params.not_after = params.not_before + time_days(CA_DAYS);
    Ok(params)
}

fn time_days(days: i64) -> time::Duration {
    time::Duration::days(days)
}

/// Issues NAME.pem and NAME-key.pem under the CA in `dir`, and says so.
fn issue(dir: &Path, name: &str, hosts: Vec<String>, node: bool) -> anyhow::Result<()> {
    let (cert, key) = issue_quietly(dir, name, hosts, node)?;
    let kind = if node { "node" } else { "client" };
    println!(
        "{kind} certificate: {} (key {})",
        cert.display(),
        key.display()
    );
    Ok(())
}

/// Issues NAME.pem and NAME-key.pem under the CA in `dir`; returns their paths.
fn issue_quietly(
    dir: &Path,
    name: &str,
    hosts: Vec<String>,
    node: bool,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    anyhow::ensure!(
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
        "a name is letters, digits, '-', '_' and '.'"
    );
    anyhow::ensure!(
        !matches!(name, "ca" | "ca-key"),
        "{name:?} is the CA's own file name: pick another"
    );
    let ca_key_pem = std::fs::read_to_string(dir.join("ca-key.pem")).with_context(|| {
        format!(
            "no CA key in {}: run `conclave certs --dir {} ca` first",
            dir.display(),
            dir.display()
        )
    })?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).context("reading the CA key")?;
    // The issuer is the CA's name and key: the certificate rebuilt from them signs as it did.
    let ca = ca_params()?.self_signed(&ca_key).context("the CA")?;
    let mut params = CertificateParams::new(hosts).context("the host names")?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = if node {
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ]
    } else {
        vec![ExtendedKeyUsagePurpose::ClientAuth]
    };
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time_days(1);
    params.not_after = now + time_days(LEAF_DAYS);
    let key_pair = KeyPair::generate().context("generating the key")?;
    let cert = params
        .signed_by(&key_pair, &ca, &ca_key)
        .context("signing the certificate")?;
    let (cert_path, key_path) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}-key.pem")),
    );
    write(&cert_path, &cert.pem(), false)?;
    write(&key_path, &key_pair.serialize_pem(), true)?;
    Ok((cert_path, key_path))
}

/// Writes `text` to `path` (readable by the owner only when `private`), replacing it whole.
fn write(path: &Path, text: &str, private: bool) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let partial = path.with_extension("partial");
    // A fresh file, so its mode is the one asked for (not a leftover's, nor a link's target).
    let _ = std::fs::remove_file(&partial);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(&partial)
        .with_context(|| format!("cannot write {}", partial.display()))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&partial, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(dir: &Path, name: &str) -> String {
        std::fs::read_to_string(dir.join(name)).expect("a certificate file")
    }

    #[test]
    fn cluster_certificates_are_made_once_and_reissued_under_a_new_ca() {
        let dir = tempfile::tempdir().expect("temp dir");
        let made = ensure_cluster_certs(dir.path(), 2, Some("conclave-{id}")).unwrap();
        let names: Vec<(&str, bool)> = made.iter().map(|(n, f)| (n.as_str(), *f)).collect();
        assert_eq!(
            names,
            [("ca", true), ("conclave-1", true), ("conclave-2", true)]
        );
        let first = read(dir.path(), "conclave-1.pem");
        // Kept on the next run; a missing one is made, the others stay.
        std::fs::remove_file(dir.path().join("conclave-2-key.pem")).unwrap();
        let again = ensure_cluster_certs(dir.path(), 2, Some("conclave-{id}")).unwrap();
        assert_eq!(again[1], ("conclave-1".to_string(), false));
        assert_eq!(again[2], ("conclave-2".to_string(), true));
        assert_eq!(read(dir.path(), "conclave-1.pem"), first);
        // A new CA: every node certificate is issued again, since the old ones are not from it.
        std::fs::remove_file(dir.path().join("ca-key.pem")).unwrap();
        let renewed = ensure_cluster_certs(dir.path(), 2, Some("conclave-{id}")).unwrap();
        assert!(renewed.iter().all(|(_, fresh)| *fresh), "{renewed:?}");
        assert_ne!(read(dir.path(), "conclave-1.pem"), first);
    }

    #[test]
    fn a_host_template_must_name_the_id() {
        let dir = tempfile::tempdir().expect("temp dir");
        let error = ensure_cluster_certs(dir.path(), 3, Some("conclave")).unwrap_err();
        assert!(error.to_string().contains("has no {id}"), "{error}");
        let made = ensure_cluster_certs(dir.path(), 1, None).unwrap();
        assert_eq!(made[1], ("n1".to_string(), true));
        assert!(dir.path().join("n1-key.pem").exists());
    }
}
