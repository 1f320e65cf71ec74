//! The `auth` section (per-tenant bearer tokens) and the `tls` blocks of the
//! `grpc` and `http` sections. Secrets are read here, once, at load time, so a
//! missing token file or a broken certificate stops the start with its path.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

use super::error::ConfigError;
use crate::ingest::validate::check_tenant;

/// Shortest token accepted: a guessable token is no protection.
pub const MIN_TOKEN_BYTES: usize = 16;

/// Bearer-token authentication of ingest and the selection stream; off unless `tokens` lists any.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// One entry per token; a tenant may have several (rotation). Empty (default): auth is off.
    pub tokens: Vec<TokenConfig>,
    /// File holding the admin token (required by `/metrics`, `/-/reload`, `/-/rules`, `/api/v1/profile`), relative to the config file.
    pub admin_token_file: Option<PathBuf>,
    /// Environment variable holding the admin token.
    pub admin_token_env: Option<String>,
    /// The admin token itself, inline (for tests only).
    pub admin_token: Option<String>,
}

/// One bearer token and the tenant it stands for. Exactly one of `token_file`, `token_env`, `token`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TokenConfig {
    /// Tenant whose data a request with this token reads and writes.
    pub tenant: String,
    /// File holding the token (surrounding whitespace ignored), relative to the config file. Preferred.
    pub token_file: Option<PathBuf>,
    /// Environment variable holding the token.
    pub token_env: Option<String>,
    /// The token itself, inline (keeps a secret in the config file: for tests only).
    pub token: Option<String>,
}

/// TLS (rustls) of one listener: PEM certificate chain and private key.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first, relative to the config file.
    pub cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1), relative to the config file.
    pub key_file: Option<PathBuf>,
}

/// Checked tokens: each token with its tenant. `Debug` shows tenants, never tokens.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthSettings {
    /// `(token, tenant)` pairs; tokens are unique.
    pub tokens: Vec<(Vec<u8>, Arc<str>)>,
}

/// The admin token. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(pub Vec<u8>);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("AdminToken(..)")
    }
}

/// A checked TLS identity, read and parsed at load time. `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// Where the chain came from (for messages).
    pub cert_file: PathBuf,
    /// The PEM certificate chain.
    pub cert_pem: Vec<u8>,
    /// The PEM private key.
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for AuthSettings {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tenants: Vec<&str> = self.tokens.iter().map(|(_, tenant)| &**tenant).collect();
        formatter
            .debug_struct("AuthSettings")
            .field("tokens_of_tenants", &tenants)
            .finish()
    }
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("TlsSettings")
            .field("cert_file", &self.cert_file)
            .finish_non_exhaustive()
    }
}

/// Reads every token; `None` when no token is configured (auth off).
pub(super) fn check_auth(
    config: &AuthConfig,
    base: &Path,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<Option<AuthSettings>, ConfigError> {
    if config.tokens.is_empty() {
        return Ok(None);
    }
    let mut tokens: Vec<(Vec<u8>, Arc<str>)> = Vec::with_capacity(config.tokens.len());
    for (index, entry) in config.tokens.iter().enumerate() {
        let tenant = check_tenant(entry.tenant.as_bytes())
            .map_err(|error| invalid(&format!("auth.tokens[{index}].tenant"), error.to_string()))?;
        let source = (&entry.token_file, &entry.token_env, &entry.token);
        let token = read_token(
            source,
            &format!("auth.tokens[{index}]"),
            "",
            &format!("tenant {tenant:?}"),
            base,
            invalid,
        )?
        .ok_or_else(|| {
            invalid(
                &format!("auth.tokens[{index}]"),
                "set exactly one of token_file, token_env, token".to_string(),
            )
        })?;
        let token = token.as_str();
        if let Some((_, other)) = tokens.iter().find(|(known, _)| known.as_slice() == token.as_bytes()) {
            return Err(invalid(
                &format!("auth.tokens[{index}]"),
                format!("the token of tenant {tenant:?} is also the token of tenant {other:?}"),
            ));
        }
        tokens.push((token.as_bytes().to_vec(), tenant));
    }
    Ok(Some(AuthSettings { tokens }))
}

/// Reads one token from exactly one of (file, environment variable, inline)
/// under `section` (keys `{prefix}token_file` etc.); `None` when none is set.
/// `whose` names the token in messages, which never quote it.
fn read_token(
    (file, variable, inline): (&Option<PathBuf>, &Option<String>, &Option<String>),
    section: &str,
    prefix: &str,
    whose: &str,
    base: &Path,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<Option<String>, ConfigError> {
    let field = |name: &str| format!("{section}.{prefix}{name}");
    let token = match (file, variable, inline) {
        (None, None, None) => return Ok(None),
        (Some(file), None, None) => {
            let path = base.join(file);
            std::fs::read_to_string(&path)
                .map_err(|error| invalid(&field("token_file"), format!("cannot read {}: {error}", path.display())))?
        }
        (None, Some(variable), None) => std::env::var(variable).map_err(|error| {
            invalid(
                &field("token_env"),
                format!("environment variable {variable:?}: {error}"),
            )
        })?,
        (None, None, Some(token)) => token.clone(),
        _ => {
            return Err(invalid(
                section,
                format!("set exactly one of {prefix}token_file, {prefix}token_env, {prefix}token"),
            ))
        }
    };
    let token = token.trim();
    // Never echo the token itself: the message may reach a log.
    if token.len() < MIN_TOKEN_BYTES {
        return Err(invalid(
            section,
            format!(
                "the token of {whose} has {} bytes, at least {MIN_TOKEN_BYTES} are required",
                token.len()
            ),
        ));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            section,
            format!("the token of {whose} is not printable ASCII without spaces"),
        ));
    }
    Ok(Some(token.to_string()))
}

/// Reads the admin token; `None` when none is set. It must differ from every
/// ingest token, so that no ingest client can use the admin endpoints.
pub(super) fn check_admin_token(
    config: &AuthConfig,
    ingest: Option<&AuthSettings>,
    base: &Path,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<Option<AdminToken>, ConfigError> {
    let source = (&config.admin_token_file, &config.admin_token_env, &config.admin_token);
    let Some(token) = read_token(source, "auth", "admin_", "the admin", base, invalid)? else {
        return Ok(None);
    };
    if let Some((_, tenant)) = ingest
        .into_iter()
        .flat_map(|settings| &settings.tokens)
        .find(|(known, _)| known.as_slice() == token.as_bytes())
    {
        return Err(invalid(
            "auth",
            format!("the admin token is also the token of tenant {tenant:?}"),
        ));
    }
    Ok(Some(AdminToken(token.into_bytes())))
}

/// Reads and parses a listener's certificate and key; `None` when TLS is off.
pub(super) fn check_tls(
    config: Option<&TlsConfig>,
    section: &str,
    base: &Path,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<Option<TlsSettings>, ConfigError> {
    let Some(config) = config else {
        return Ok(None);
    };
    let (Some(cert_file), Some(key_file)) = (&config.cert_file, &config.key_file) else {
        return Err(invalid(
            &format!("{section}.tls"),
            "needs both cert_file and key_file".to_string(),
        ));
    };
    let read = |name: &str, file: &Path| {
        let path = base.join(file);
        std::fs::read(&path)
            .map(|bytes| (path.clone(), bytes))
            .map_err(|error| {
                invalid(
                    &format!("{section}.tls.{name}"),
                    format!("cannot read {}: {error}", path.display()),
                )
            })
    };
    let (cert_path, cert_pem) = read("cert_file", cert_file)?;
    let (key_path, key_pem) = read("key_file", key_file)?;
    let chain: Vec<CertificateDer> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|error| {
            invalid(
                &format!("{section}.tls.cert_file"),
                format!("{}: {error}", cert_path.display()),
            )
        })?;
    if chain.is_empty() {
        return Err(invalid(
            &format!("{section}.tls.cert_file"),
            format!("{}: no PEM certificate in it", cert_path.display()),
        ));
    }
    PrivateKeyDer::from_pem_slice(&key_pem).map_err(|error| {
        invalid(
            &format!("{section}.tls.key_file"),
            format!("{}: {error}", key_path.display()),
        )
    })?;
    let settings = TlsSettings {
        cert_file: cert_path,
        cert_pem,
        key_pem,
    };
    // Builds the rustls config once now, so a key that does not fit the certificate stops the start.
    crate::tls::server_config(&settings, &[]).map_err(|error| invalid(&format!("{section}.tls"), error))?;
    Ok(Some(settings))
}
