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
    /// A CA and a node certificate for each of nodes 1..=N, made where missing or not valid
    /// under the CA, kept after: what the compose file's `certs` service runs.
    Cluster {
        /// How many nodes.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=99))]
        nodes: u64,
        /// Each node's host name, `{id}` standing for its id (`conclave-{id}`); its files are
        /// named after it. Without it they are n{id}.pem and n{id}-key.pem. Every certificate
        /// also names localhost and 127.0.0.1.
        #[arg(long)]
        host_template: Option<String>,
        /// Also copy the CA certificate and every node's certificate and key here (not the CA's
        /// key): what the nodes mount.
        #[arg(long)]
        nodes_out: Option<PathBuf>,
        /// Also copy the CA certificate alone here: what clients mount.
        #[arg(long)]
        public_out: Option<PathBuf>,
    },
}

/// How long issued certificates are valid.
const LEAF_DAYS: i64 = 825;
/// `certs cluster` issues a node certificate again when it would expire within this many days.
const RENEW_WITHIN_DAYS: u64 = 30;
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
            nodes_out,
            public_out,
        } => {
            let made = ensure_cluster_certs(&args.dir, nodes, host_template.as_deref())?;
            for (name, fresh) in &made {
                let what = if *fresh { "made" } else { "kept" };
                println!("{what} {}", args.dir.join(format!("{name}.pem")).display());
            }
            let names: Vec<&str> = made.iter().skip(1).map(|(n, _)| n.as_str()).collect();
            if let Some(out) = nodes_out {
                let mut files = vec!["ca.pem".to_string()];
                for name in &names {
                    files.extend([format!("{name}.pem"), format!("{name}-key.pem")]);
                }
                publish(&args.dir, &out, &files)?;
                println!(
                    "copied the CA certificate and the node files to {}",
                    out.display()
                );
            }
            if let Some(out) = public_out {
                publish(&args.dir, &out, &["ca.pem".to_string()])?;
                println!("copied the CA certificate to {}", out.display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A CA and node certificates for nodes 1..=`nodes` in `dir`. Node `id`'s files are named
/// after `host_template` with `{id}` replaced (the host it is reached at, besides localhost and
/// 127.0.0.1), or `n{id}` without one.
///
/// A CA is made when `ca.pem` is missing. A node's files are kept while they are valid (the key
/// is the certificate's, which the CA signed, for server authentication) now and for
/// `RENEW_WITHIN_DAYS` more, and issued again otherwise, so a new CA, a run cut short, a
/// mismatched pair or a certificate near its end heals on the next run. With `ca.pem` but no
/// `ca-key.pem` the CA is someone else's: nothing is issued, a node whose files are missing or
/// not valid now is an error, and one near its end is warned about. Returns each certificate's name
/// and whether it was made now; the CA comes first.
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
    let (ca_cert, ca_key) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    let new_ca = !ca_cert.exists();
    if new_ca {
        // The key first: a run cut short between the two leaves no certificate, so the next
        // run makes the CA again.
        let key_pair = KeyPair::generate().context("generating the CA key")?;
        let ca = ca_params()?
            .self_signed(&key_pair)
            .context("signing the CA")?;
        write(&ca_key, &key_pair.serialize_pem(), true)?;
        write(&ca_cert, &ca.pem(), false)?;
    }
    let can_issue = ca_key.exists();
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
        let files = crate::tls::TlsFiles {
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}-key.pem")),
            ca: ca_cert.clone(),
        };
        let now = std::time::SystemTime::now();
        let soon = now + std::time::Duration::from_secs(RENEW_WITHIN_DAYS * 24 * 3600);
        let check = |at| crate::tls::Tls::check_node_files(files.clone(), at);
        match (check(soon), can_issue) {
            (Ok(()), _) => made.push((name, false)),
            (Err(_), true) => {
                issue_quietly(dir, &name, hosts, true, LEAF_DAYS)?;
                made.push((name, true));
            }
            (Err(_), false) => match check(now) {
                Ok(()) => {
                    eprintln!(
                        "warning: {} expires within {RENEW_WITHIN_DAYS} days: renew it with \
                         your CA",
                        files.cert.display()
                    );
                    made.push((name, false));
                }
                Err(why) => bail!(
                    "{} holds the CA certificate without its key (someone else's CA), so \
                     {name}'s files must be there already: {why:#}",
                    dir.display()
                ),
            },
        }
    }
    Ok(made)
}

/// Copies `files` from `from` to `to`, each replaced whole and only when it differs; keys
/// (`*-key.pem`) stay readable by the owner only.
fn publish(from: &Path, to: &Path, files: &[String]) -> anyhow::Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    for file in files {
        let text = std::fs::read_to_string(from.join(file))
            .with_context(|| format!("cannot read {}", from.join(file).display()))?;
        let target = to.join(file);
        if std::fs::read_to_string(&target).ok().as_deref() != Some(text.as_str()) {
            write(&target, &text, file.ends_with("-key.pem"))?;
        }
    }
    Ok(())
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
    let (cert, key) = issue_quietly(dir, name, hosts, node, LEAF_DAYS)?;
    let kind = if node { "node" } else { "client" };
    println!(
        "{kind} certificate: {} (key {})",
        cert.display(),
        key.display()
    );
    Ok(())
}

/// Issues NAME.pem and NAME-key.pem, valid for `days`, under the CA in `dir`; returns their
/// paths.
fn issue_quietly(
    dir: &Path,
    name: &str,
    hosts: Vec<String>,
    node: bool,
    days: i64,
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
    params.not_after = now + time_days(days);
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

    fn ensure(dir: &Path) -> anyhow::Result<Vec<(String, bool)>> {
        ensure_cluster_certs(dir, 2, Some("conclave-{id}"))
    }

    #[test]
    fn cluster_certificates_are_kept_while_valid_and_issued_again_when_not() {
        let dir = tempfile::tempdir().expect("temp dir");
        let made = ensure(dir.path()).unwrap();
        let names: Vec<(&str, bool)> = made.iter().map(|(n, f)| (n.as_str(), *f)).collect();
        assert_eq!(
            names,
            [("ca", true), ("conclave-1", true), ("conclave-2", true)]
        );
        let first = read(dir.path(), "conclave-1.pem");
        // Kept on the next run; a missing key is made again, with its certificate.
        std::fs::remove_file(dir.path().join("conclave-2-key.pem")).unwrap();
        let again = ensure(dir.path()).unwrap();
        assert_eq!(again[1], ("conclave-1".to_string(), false));
        assert_eq!(again[2], ("conclave-2".to_string(), true));
        assert_eq!(read(dir.path(), "conclave-1.pem"), first);
        // Another node's key beside a certificate (a run cut short between the two writes).
        std::fs::copy(
            dir.path().join("conclave-2-key.pem"),
            dir.path().join("conclave-1-key.pem"),
        )
        .unwrap();
        assert_eq!(ensure(dir.path()).unwrap()[1], ("conclave-1".into(), true));
        let second = read(dir.path(), "conclave-1.pem");
        // A new CA: every node certificate is issued again, the old ones are not from it.
        std::fs::remove_file(dir.path().join("ca.pem")).unwrap();
        let renewed = ensure(dir.path()).unwrap();
        assert!(renewed.iter().all(|(_, fresh)| *fresh), "{renewed:?}");
        assert_ne!(read(dir.path(), "conclave-1.pem"), second);
        assert_eq!(ensure(dir.path()).unwrap()[1], ("conclave-1".into(), false));
    }

    #[test]
    fn a_certificate_near_its_end_is_issued_again() {
        let dir = tempfile::tempdir().expect("temp dir");
        ensure(dir.path()).unwrap();
        let hosts = vec!["conclave-1".to_string()];
        issue_quietly(dir.path(), "conclave-1", hosts.clone(), true, 10).unwrap();
        let short = read(dir.path(), "conclave-1.pem");
        let again = ensure(dir.path()).unwrap();
        assert_eq!(again[1], ("conclave-1".to_string(), true), "renewed");
        assert_eq!(again[2], ("conclave-2".to_string(), false), "kept");
        assert_ne!(read(dir.path(), "conclave-1.pem"), short);
        // Under someone else's CA it is kept (with a warning) while it is still valid.
        issue_quietly(dir.path(), "conclave-1", hosts, true, 10).unwrap();
        std::fs::remove_file(dir.path().join("ca-key.pem")).unwrap();
        let kept = ensure(dir.path()).unwrap();
        assert_eq!(kept[1], ("conclave-1".to_string(), false));
    }

    #[test]
    fn someone_elses_ca_is_never_replaced() {
        let dir = tempfile::tempdir().expect("temp dir");
        ensure(dir.path()).unwrap();
        let (ca, node) = (
            read(dir.path(), "ca.pem"),
            read(dir.path(), "conclave-1.pem"),
        );
        // The CA's key kept elsewhere: what is there and valid stays.
        std::fs::remove_file(dir.path().join("ca-key.pem")).unwrap();
        let kept = ensure(dir.path()).unwrap();
        assert!(kept.iter().all(|(_, fresh)| !*fresh), "{kept:?}");
        assert_eq!(read(dir.path(), "ca.pem"), ca);
        assert_eq!(read(dir.path(), "conclave-1.pem"), node);
        // A node's files missing: an error, and the CA is still the same.
        std::fs::remove_file(dir.path().join("conclave-2.pem")).unwrap();
        let error = ensure(dir.path()).unwrap_err();
        assert!(error.to_string().contains("without its key"), "{error:#}");
        assert_eq!(read(dir.path(), "ca.pem"), ca);
    }

    #[test]
    fn published_node_files_leave_the_ca_key_behind() {
        let dir = tempfile::tempdir().expect("temp dir");
        let made = ensure(dir.path()).unwrap();
        let names: Vec<String> = made.iter().skip(1).map(|(n, _)| n.clone()).collect();
        let out = dir.path().join("nodes");
        let mut files = vec!["ca.pem".to_string()];
        for name in &names {
            files.extend([format!("{name}.pem"), format!("{name}-key.pem")]);
        }
        publish(dir.path(), &out, &files).unwrap();
        let mut listed: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        listed.sort();
        files.sort();
        assert_eq!(listed, files);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out.join("conclave-1-key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
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
