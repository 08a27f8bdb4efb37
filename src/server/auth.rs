//! Who may call the server: logins (Flight handshake with HTTP Basic credentials) that
//! yield signed, expiring bearer tokens, static bearer tokens, and the check every call
//! goes through.
//!
//! Issued tokens are `tb1.<payload>.<signature>`: the user and the expiry, signed with
//! HMAC-SHA256. Nothing is stored per token, so any node holding the same
//! `server.auth.token_secret` accepts a token another node issued (nodes behind a load
//! balancer), and a restart with the same secret keeps clients logged in.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use argon2::password_hash::{PasswordHash as PhcString, PasswordVerifier, SaltString};
use argon2::{Argon2, PasswordHasher};
use base64::Engine as _;
use base64::alphabet;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use tributary_core::Secret;

use crate::config::AuthConfig;

/// Standard base64 with or without padding: Go's Flight client (ADBC, grpc-go) sends Basic
/// credentials unpadded.
const BASIC: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Marks issued tokens (and their format version).
const TOKEN_PREFIX: &str = "tb1";

/// A password hash from the configuration.
#[derive(Clone, PartialEq, Eq)]
pub enum PasswordHash {
    /// A PHC string, `$argon2id$v=19$m=…,t=…,p=…$salt$hash` (also argon2i/argon2d).
    Argon2(String),
    /// A modular-crypt bcrypt hash, `$2b$12$…`.
    Bcrypt(String),
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PasswordHash::Argon2(_) => f.write_str("Argon2(…)"),
            PasswordHash::Bcrypt(_) => f.write_str("Bcrypt(…)"),
        }
    }
}

impl PasswordHash {
    /// Reads a hash, saying what is wrong with it if it cannot be used.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.starts_with("$argon2") {
            let hash = PhcString::new(text).map_err(|e| format!("not a valid Argon2 hash: {e}"))?;
            argon2::Params::try_from(&hash).map_err(|e| format!("not a valid Argon2 hash: {e}"))?;
            if hash.salt.is_none() || hash.hash.is_none() {
                return Err("not a valid Argon2 hash: no salt or no hash".into());
            }
            Ok(PasswordHash::Argon2(text.to_string()))
        } else if ["$2a$", "$2b$", "$2x$", "$2y$"]
            .iter()
            .any(|p| text.starts_with(p))
        {
            if text.len() != 60 {
                return Err("not a valid bcrypt hash: expected 60 characters".into());
            }
            Ok(PasswordHash::Bcrypt(text.to_string()))
        } else {
            Err(
                "expected an Argon2 (`$argon2id$…`) or bcrypt (`$2b$…`) hash; make one with `tributary hash-password`"
                    .into(),
            )
        }
    }

    /// Whether `password` matches. Slow on purpose (tens of milliseconds): run it off the
    /// async threads.
    fn verify(&self, password: &str) -> bool {
        match self {
            PasswordHash::Argon2(phc) => PhcString::new(phc).is_ok_and(|hash| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &hash)
                    .is_ok()
            }),
            PasswordHash::Bcrypt(hash) => bcrypt::verify(password, hash).unwrap_or(false),
        }
    }
}

/// Hashes `password` with Argon2id (the library's default, OWASP-recommended parameters)
/// and a random salt, for `server.auth.users[].password_hash`.
pub fn hash_password(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| "the system random generator failed".to_string())?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| e.to_string())
}

/// How a user proves who they are.
enum Credential {
    Hash(PasswordHash),
    /// A password from the environment.
    Plain(Secret),
}

/// The caller a request was authenticated as; requests carry it as an extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal(pub String);

/// A token issued at login.
#[derive(Debug)]
pub struct Issued {
    /// The bearer token.
    pub token: String,
    /// When it stops being accepted.
    pub expires: SystemTime,
}

/// Why a login or a token was refused. Never carries the password or the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No credentials were presented.
    Missing,
    /// The `authorization` header is not `Basic …`/`Bearer …` or does not decode.
    Malformed,
    /// No such user.
    UnknownUser,
    /// The password does not match.
    WrongPassword,
    /// The token's signature does not match (or it is not a token we know).
    BadToken,
    /// The token has expired.
    Expired,
}

impl Refusal {
    /// A short label, for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Missing => "missing_credentials",
            Refusal::Malformed => "malformed_credentials",
            Refusal::UnknownUser => "unknown_user",
            Refusal::WrongPassword => "wrong_password",
            Refusal::BadToken => "invalid_token",
            Refusal::Expired => "expired_token",
        }
    }

    /// What the client is told: the same for an unknown user and a wrong password, so
    /// that logins cannot be used to find out which users exist.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::Missing => {
                "authentication required: log in (Flight handshake with Basic credentials) or send `authorization: Bearer <token>`"
            }
            Refusal::Malformed => {
                "the authorization header must be `Basic <base64(user:password)>` or `Bearer <token>`"
            }
            Refusal::UnknownUser | Refusal::WrongPassword => "invalid user name or password",
            Refusal::BadToken => "invalid bearer token",
            Refusal::Expired => "the bearer token has expired: log in again",
        }
    }
}

/// Checks logins and tokens against `server.auth`.
pub struct Authenticator {
    users: HashMap<String, Credential>,
    /// Static tokens, as their HMAC under `key`, so they are compared in constant time.
    tokens: Vec<(String, hmac::Tag)>,
    key: hmac::Key,
    ttl: Duration,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("users", &self.users.len())
            .field("tokens", &self.tokens.len())
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// The checks `config` describes (already validated when the config was loaded).
    pub fn new(config: &AuthConfig) -> Result<Self, String> {
        let key = match &config.token_secret {
            Some(secret) => hmac::Key::new(hmac::HMAC_SHA256, secret.expose().as_bytes()),
            None => {
                tracing::info!(
                    "tokens are signed with a key drawn at start: they are valid on this node until it restarts (set server.auth.token_secret to share them)"
                );
                hmac::Key::generate(hmac::HMAC_SHA256, &SystemRandom::new())
                    .map_err(|_| "the system random generator failed".to_string())?
            }
        };
        let mut users = HashMap::new();
        for user in &config.users {
            let credential = match (&user.password_hash, &user.password) {
                (Some(hash), _) => Credential::Hash(PasswordHash::parse(hash)?),
                (None, Some(password)) => Credential::Plain(password.clone()),
                (None, None) => return Err(format!("user `{}` has no password", user.name)),
            };
            users.insert(user.name.clone(), credential);
        }
        let tokens = config
            .tokens
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
                    hmac::sign(&key, t.token.expose().as_bytes()),
                )
            })
            .collect();
        Ok(Authenticator {
            users,
            tokens,
            key,
            ttl: config.token_ttl,
        })
    }

    /// Checks `user`'s `password` and issues a token. Blocking (password hashing).
    pub fn login(&self, user: &str, password: &str) -> Result<Issued, Refusal> {
        match self.users.get(user) {
            None => Err(Refusal::UnknownUser),
            Some(Credential::Hash(hash)) if !hash.verify(password) => Err(Refusal::WrongPassword),
            Some(Credential::Plain(expected))
                if hmac::verify(
                    &self.key,
                    password.as_bytes(),
                    hmac::sign(&self.key, expected.expose().as_bytes()).as_ref(),
                )
                .is_err() =>
            {
                Err(Refusal::WrongPassword)
            }
            Some(_) => Ok(self.issue(user)),
        }
    }

    /// A token for `user`, valid for the configured time.
    fn issue(&self, user: &str) -> Issued {
        let expires = SystemTime::now() + self.ttl;
        let seconds = expires
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let payload = URL_SAFE_NO_PAD.encode(format!("{seconds}:{user}"));
        let signature = hmac::sign(&self.key, payload.as_bytes());
        Issued {
            token: format!(
                "{TOKEN_PREFIX}.{payload}.{}",
                URL_SAFE_NO_PAD.encode(signature.as_ref())
            ),
            expires,
        }
    }

    /// Who `token` (a bearer token, issued or static) stands for.
    pub fn verify_token(&self, token: &str) -> Result<Principal, Refusal> {
        if let Some(rest) = token
            .strip_prefix(TOKEN_PREFIX)
            .and_then(|r| r.strip_prefix('.'))
        {
            let (payload, signature) = rest.split_once('.').ok_or(Refusal::BadToken)?;
            let signature = URL_SAFE_NO_PAD
                .decode(signature)
                .map_err(|_| Refusal::BadToken)?;
            hmac::verify(&self.key, payload.as_bytes(), &signature)
                .map_err(|_| Refusal::BadToken)?;
            // Signed by us, so the payload is ours.
            let payload = URL_SAFE_NO_PAD
                .decode(payload)
                .ok()
                .and_then(|p| String::from_utf8(p).ok())
                .ok_or(Refusal::BadToken)?;
            let (seconds, user) = payload.split_once(':').ok_or(Refusal::BadToken)?;
            let expires =
                UNIX_EPOCH + Duration::from_secs(seconds.parse().map_err(|_| Refusal::BadToken)?);
            if SystemTime::now() >= expires {
                return Err(Refusal::Expired);
            }
            // A user removed from the config loses access at once, token or not.
            if !self.users.contains_key(user) {
                return Err(Refusal::BadToken);
            }
            return Ok(Principal(user.to_string()));
        }
        self.tokens
            .iter()
            .find(|(_, tag)| hmac::verify(&self.key, token.as_bytes(), tag.as_ref()).is_ok())
            .map(|(name, _)| Principal(name.clone()))
            .ok_or(Refusal::BadToken)
    }

    /// Who the `authorization` header of a call stands for: only bearer tokens, since a
    /// password check on every call would cost tens of milliseconds.
    pub fn check_header(&self, header: Option<&str>) -> Result<Principal, Refusal> {
        match header.map(Authorization::parse) {
            None => Err(Refusal::Missing),
            Some(Authorization::Bearer(token)) => self.verify_token(token),
            Some(Authorization::Basic { .. }) => Err(Refusal::Missing),
            Some(Authorization::Malformed) => Err(Refusal::Malformed),
        }
    }
}

/// An `authorization` header's content.
#[derive(PartialEq, Eq)]
pub enum Authorization<'a> {
    /// `Basic base64(user:password)`.
    Basic {
        /// The user.
        user: String,
        /// The password.
        password: String,
    },
    /// `Bearer token`.
    Bearer(&'a str),
    /// Anything else.
    Malformed,
}

impl fmt::Debug for Authorization<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Authorization::Basic { user, .. } => write!(f, "Basic({user}, ***)"),
            Authorization::Bearer(_) => f.write_str("Bearer(***)"),
            Authorization::Malformed => f.write_str("Malformed"),
        }
    }
}

impl<'a> Authorization<'a> {
    /// Reads a header value; the scheme is case-insensitive (RFC 9110).
    pub fn parse(header: &'a str) -> Self {
        let Some((scheme, value)) = header.trim().split_once(' ') else {
            return Authorization::Malformed;
        };
        let value = value.trim();
        if scheme.eq_ignore_ascii_case("bearer") && !value.is_empty() {
            Authorization::Bearer(value)
        } else if scheme.eq_ignore_ascii_case("basic") {
            BASIC
                .decode(value)
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .and_then(|text| {
                    text.split_once(':')
                        .map(|(user, password)| Authorization::Basic {
                            user: user.to_string(),
                            password: password.to_string(),
                        })
                })
                .unwrap_or(Authorization::Malformed)
        } else {
            Authorization::Malformed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{TokenConfig, UserConfig};

    fn authenticator(ttl: Duration) -> Authenticator {
        Authenticator::new(&AuthConfig {
            users: vec![
                UserConfig {
                    name: "ada".into(),
                    password_hash: Some(hash_password("s3cret:x").unwrap()),
                    password: None,
                },
                UserConfig {
                    name: "bob".into(),
                    password_hash: Some(bcrypt::hash("hunter2", 4).unwrap()),
                    password: None,
                },
                UserConfig {
                    name: "eve".into(),
                    password_hash: None,
                    password: Some(Secret::new("from-env")),
                },
            ],
            tokens: vec![TokenConfig {
                name: "dashboards".into(),
                token: Secret::new("0123456789abcdef-static"),
            }],
            token_ttl: ttl,
            token_secret: Some(Secret::new("k".repeat(32))),
        })
        .unwrap()
    }

    #[test]
    fn argon2_bcrypt_and_environment_passwords_log_in() {
        let auth = authenticator(Duration::from_secs(60));
        for (user, password) in [("ada", "s3cret:x"), ("bob", "hunter2"), ("eve", "from-env")] {
            let issued = auth.login(user, password).unwrap();
            assert_eq!(auth.verify_token(&issued.token), Ok(Principal(user.into())));
            assert_eq!(
                auth.login(user, "wrong").unwrap_err(),
                Refusal::WrongPassword
            );
        }
        assert_eq!(auth.login("nobody", "x").unwrap_err(), Refusal::UnknownUser);
    }

    #[test]
    fn tokens_expire_and_cannot_be_forged() {
        let auth = authenticator(Duration::ZERO);
        let issued = auth.login("eve", "from-env").unwrap();
        assert_eq!(auth.verify_token(&issued.token), Err(Refusal::Expired));

        let auth = authenticator(Duration::from_secs(60));
        let token = auth.login("eve", "from-env").unwrap().token;
        // Another user's name in the payload breaks the signature.
        let (head, signature) = token.rsplit_once('.').unwrap();
        let forged = format!(
            "{TOKEN_PREFIX}.{}.{signature}",
            URL_SAFE_NO_PAD.encode("99999999999:ada")
        );
        assert_ne!(head, forged.rsplit_once('.').unwrap().0);
        assert_eq!(auth.verify_token(&forged), Err(Refusal::BadToken));
        assert_eq!(auth.verify_token("tb1.x"), Err(Refusal::BadToken));
        assert_eq!(auth.verify_token("whatever"), Err(Refusal::BadToken));
        // Another secret (another deployment) does not accept it.
        let mut other = authenticator(Duration::from_secs(60));
        other.key = hmac::Key::new(hmac::HMAC_SHA256, &[7; 32]);
        assert_eq!(other.verify_token(&token), Err(Refusal::BadToken));
        assert_eq!(
            auth.verify_token("0123456789abcdef-static"),
            Ok(Principal("dashboards".into()))
        );
    }

    #[test]
    fn a_user_removed_from_the_config_loses_access_at_once() {
        let auth = authenticator(Duration::from_secs(60));
        let token = auth.login("ada", "s3cret:x").unwrap().token;
        let mut without_ada = authenticator(Duration::from_secs(60));
        without_ada.users.remove("ada");
        assert_eq!(without_ada.verify_token(&token), Err(Refusal::BadToken));
        assert_eq!(
            authenticator(Duration::from_secs(60)).verify_token(&token),
            Ok(Principal("ada".into()))
        );
    }

    #[test]
    fn headers_are_read_case_insensitively_and_never_printed() {
        let basic = format!("basic {}", BASIC.encode("ada:pa:ss"));
        // Unpadded, as grpc-go sends it.
        assert_eq!(
            Authorization::parse("Basic ZXRsOmV0bCBwYTpzc3g"),
            Authorization::Basic {
                user: "etl".into(),
                password: "etl pa:ssx".into()
            }
        );
        assert_eq!(
            Authorization::parse(&basic),
            Authorization::Basic {
                user: "ada".into(),
                password: "pa:ss".into()
            }
        );
        assert_eq!(
            format!("{:?}", Authorization::parse(&basic)),
            "Basic(ada, ***)"
        );
        assert_eq!(
            Authorization::parse("BEARER abc"),
            Authorization::Bearer("abc")
        );
        assert_eq!(Authorization::parse("Bearer"), Authorization::Malformed);
        assert_eq!(Authorization::parse("Basic !!!"), Authorization::Malformed);
        assert_eq!(Authorization::parse("Digest x"), Authorization::Malformed);
    }

    #[test]
    fn hashes_are_checked_when_read() {
        assert!(PasswordHash::parse(&hash_password("x").unwrap()).is_ok());
        let e = PasswordHash::parse("$argon2id$nonsense");
        assert!(e.is_err(), "{e:?}");
        assert!(PasswordHash::parse("$2b$04$short").is_err());
        assert!(
            PasswordHash::parse("plaintext")
                .unwrap_err()
                .contains("hash-password")
        );
    }
}
