//! `server.auth`, `server.tls` and `server.metrics_listen`: who may connect, over what, and
//! where Prometheus scrapes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, de};
use tributary_core::Secret;
use tributary_core::config::{OptionValue, de as config_de};

/// `server.auth`: clients log in through the Flight handshake (HTTP Basic) and get a bearer
/// token, or present a static bearer token; every other call must carry a valid token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Users who log in with a password.
    #[serde(default)]
    pub users: Vec<UserConfig>,
    /// Long-lived bearer tokens, for services that cannot log in (`${ENV}` only).
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    /// How long a token issued at login stays valid.
    #[serde(
        default = "default_token_ttl",
        deserialize_with = "config_de::duration"
    )]
    pub token_ttl: Duration,
    /// The key signing issued tokens (`${ENV}` only). Nodes behind one load balancer share
    /// it so that each accepts the others' tokens; without it each process draws its own.
    pub token_secret: Option<Secret>,
}

fn default_token_ttl() -> Duration {
    Duration::from_secs(3600)
}

/// One entry of `server.auth.users`: a name and either a password hash or a password
/// from the environment.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// The login name.
    pub name: String,
    /// An Argon2 (`$argon2id$…`) or bcrypt (`$2b$…`) hash, e.g. from `tributary hash-password`.
    pub password_hash: Option<String>,
    /// The password itself, only as `${ENV}`.
    pub password: Option<Secret>,
}

/// One entry of `server.auth.tokens`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who the token stands for, in logs and metrics.
    pub name: String,
    /// The token (`${ENV}` only).
    pub token: Secret,
}

/// `server.tls`: serve over TLS with this certificate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, the server's certificate first (relative to the config file).
    pub cert: PathBuf,
    /// PEM private key of the certificate.
    pub key: PathBuf,
    /// PEM CA certificates; when set, clients must present a certificate signed by one.
    pub client_ca: Option<PathBuf>,
}

/// The keys whose values must be `${ENV}` references, never the secret itself, as
/// (key path in `server.auth`, field).
pub const FROM_ENV_ONLY: &[(&str, &str)] = &[
    ("users", "password"),
    ("tokens", "token"),
    ("", "token_secret"),
];

/// Where `/metrics` is served by default.
pub fn default_metrics_listen() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 9464)))
}

/// An address, or `off` (or null) for none.
pub fn address_or_off<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<SocketAddr>, D::Error> {
    match Option::<OptionValue>::deserialize(deserializer)? {
        None => Ok(None),
        Some(OptionValue(text)) => parse_address_or_off(&text).map_err(de::Error::custom),
    }
}

/// Reads `host:port`, or `off` (also `false`, `none`) for no address.
pub fn parse_address_or_off(text: &str) -> Result<Option<SocketAddr>, String> {
    match text.trim() {
        "off" | "false" | "none" => Ok(None),
        addr => addr
            .parse()
            .map(Some)
            .map_err(|e| format!("invalid value `{text}`: {e} (expected host:port, or `off`)")),
    }
}
