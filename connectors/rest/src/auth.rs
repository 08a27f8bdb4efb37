//! How requests authenticate: Basic, bearer tokens, API keys, and OAuth 2 access tokens
//! obtained from a token endpoint (client credentials or a refresh token) and renewed
//! before they expire or when the API refuses one.

use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::Client;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue};
use serde::Deserialize;
use tokio::sync::Mutex;
use tributary_core::{Error, Result, Secret};
use url::Url;

use crate::config::{AuthConfig, ClientAuth, Grant, KeyLocation};

/// A token is renewed this long before the expiry its endpoint announced, so that a
/// request does not leave with a token that expires on the way.
const EXPIRY_MARGIN: Duration = Duration::from_secs(30);

/// A source's authentication.
#[derive(Debug)]
pub enum Auth {
    /// None.
    None,
    /// A fixed `Authorization` header (Basic or Bearer) or API-key header.
    Header(HeaderName, Secret),
    /// An API key in the query string.
    Query {
        /// The parameter name.
        name: String,
        /// The key.
        value: Secret,
    },
    /// OAuth 2 access tokens.
    OAuth2(Box<OAuth2>),
}

/// An OAuth 2 client.
#[derive(Debug)]
pub struct OAuth2 {
    token_url: Url,
    grant: Grant,
    client_id: String,
    client_secret: Option<Secret>,
    scope: Option<String>,
    client_auth: ClientAuth,
    /// The refresh token; endpoints that rotate them hand out a new one with each access
    /// token.
    refresh_token: Mutex<Option<Secret>>,
    token: Mutex<Option<Token>>,
}

#[derive(Debug, Clone)]
struct Token {
    access: Secret,
    /// When to stop using it; never if the endpoint did not say.
    renew_at: Option<Instant>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    token_type: Option<String>,
    #[serde(default)]
    expires_in: Option<serde_json::Number>,
    #[serde(default)]
    refresh_token: Option<String>,
}

#[derive(Deserialize)]
struct TokenError {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

impl Auth {
    /// Builds the authentication of a source from its config; `key` is the config key of
    /// `auth`, for errors.
    pub fn new(config: &AuthConfig, key: &str) -> Result<Self> {
        let header = |name: HeaderName, value: String, field: &str| {
            HeaderValue::from_str(&value).map_err(|_| {
                Error::config(
                    format!("{key}.{field}"),
                    "holds characters a header cannot carry",
                )
            })?;
            Ok(Auth::Header(name, Secret::new(value)))
        };
        match config {
            AuthConfig::None => Ok(Auth::None),
            AuthConfig::Basic { username, password } => {
                let pair = format!("{username}:{}", password.expose());
                let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
                header(AUTHORIZATION, format!("Basic {encoded}"), "password")
            }
            AuthConfig::Bearer { token } => {
                header(AUTHORIZATION, format!("Bearer {}", token.expose()), "token")
            }
            AuthConfig::ApiKey {
                name,
                value,
                location: KeyLocation::Header,
            } => {
                let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    Error::config(
                        format!("{key}.name"),
                        format!("`{name}` is not a valid header name"),
                    )
                })?;
                header(name, value.expose().to_string(), "value")
            }
            AuthConfig::ApiKey {
                name,
                value,
                location: KeyLocation::Query,
            } => Ok(Auth::Query {
                name: name.clone(),
                value: value.clone(),
            }),
            AuthConfig::Oauth2 {
                token_url,
                grant,
                client_id,
                client_secret,
                refresh_token,
                scope,
                client_auth,
            } => {
                let token_url = Url::parse(token_url).map_err(|e| {
                    Error::config(
                        format!("{key}.token_url"),
                        format!("`{token_url}` is not a URL: {e}"),
                    )
                })?;
                if *grant == Grant::RefreshToken && refresh_token.is_none() {
                    return Err(Error::config(
                        format!("{key}.refresh_token"),
                        "`grant: refresh_token` needs a `refresh_token`",
                    ));
                }
                if *grant == Grant::ClientCredentials && client_secret.is_none() {
                    return Err(Error::config(
                        format!("{key}.client_secret"),
                        "`grant: client_credentials` needs a `client_secret`",
                    ));
                }
                Ok(Auth::OAuth2(Box::new(OAuth2 {
                    token_url,
                    grant: *grant,
                    client_id: client_id.clone(),
                    client_secret: client_secret.clone(),
                    scope: scope.clone(),
                    client_auth: *client_auth,
                    refresh_token: Mutex::new(refresh_token.clone()),
                    token: Mutex::new(None),
                })))
            }
        }
    }

    /// Adds the credentials to a request: returns the header to send, or puts the key into
    /// `url`'s query.
    pub async fn apply(
        &self,
        client: &Client,
        url: &mut Url,
    ) -> Result<Option<(HeaderName, HeaderValue)>> {
        match self {
            Auth::None => Ok(None),
            Auth::Header(name, value) => Ok(Some((name.clone(), sensitive(value.expose())?))),
            Auth::Query { name, value } => {
                set_param(url, name, value.expose());
                Ok(None)
            }
            Auth::OAuth2(oauth) => {
                let token = oauth.access_token(client).await?;
                let value = sensitive(&format!("Bearer {}", token.expose()))?;
                Ok(Some((AUTHORIZATION, value)))
            }
        }
    }

    /// Whether a refused request is worth trying again with renewed credentials.
    pub fn renews(&self) -> bool {
        matches!(self, Auth::OAuth2(_))
    }

    /// Forgets the current access token, so the next request gets a new one.
    pub async fn invalidate(&self) {
        if let Auth::OAuth2(oauth) = self {
            *oauth.token.lock().await = None;
        }
    }

    /// `url` as it may be shown in logs and errors: an API key in the query is replaced by
    /// `***`.
    pub fn redact(&self, url: &Url) -> String {
        match self {
            Auth::Query { name, .. } if url.query_pairs().any(|(k, _)| k == name.as_str()) => {
                let mut shown = url.clone();
                set_param(&mut shown, name, "***");
                shown.to_string()
            }
            _ => url.to_string(),
        }
    }
}

impl OAuth2 {
    async fn access_token(&self, client: &Client) -> Result<Secret> {
        let mut token = self.token.lock().await;
        if let Some(t) = token.as_ref()
            && t.renew_at.is_none_or(|at| Instant::now() < at)
        {
            return Ok(t.access.clone());
        }
        let fresh = self.request_token(client).await?;
        let access = fresh.access.clone();
        *token = Some(fresh);
        Ok(access)
    }

    async fn request_token(&self, client: &Client) -> Result<Token> {
        let failed = |why: String| {
            Error::Unavailable(format!(
                "OAuth 2 token request to {} failed: {why}",
                self.token_url
            ))
        };
        let refresh = match self.grant {
            Grant::ClientCredentials => None,
            Grant::RefreshToken => self.refresh_token.lock().await.clone(),
        };
        let mut request = client
            .post(self.token_url.clone())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(reqwest::header::ACCEPT, "application/json");
        if self.client_auth == ClientAuth::Basic {
            let secret = self.client_secret.as_ref().map(Secret::expose);
            request = request.basic_auth(&self.client_id, secret);
        }
        let body = {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            match &refresh {
                None => form.append_pair("grant_type", "client_credentials"),
                Some(token) => form
                    .append_pair("grant_type", "refresh_token")
                    .append_pair("refresh_token", token.expose()),
            };
            if let Some(scope) = &self.scope {
                form.append_pair("scope", scope);
            }
            if self.client_auth == ClientAuth::Body {
                form.append_pair("client_id", &self.client_id);
                if let Some(secret) = &self.client_secret {
                    form.append_pair("client_secret", secret.expose());
                }
            }
            form.finish()
        };
        let response = request
            .body(body)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(|e| failed(e.without_url().to_string()))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| failed(e.without_url().to_string()))?;
        if !status.is_success() {
            // RFC 6749 §5.2 errors name what was wrong and never echo the credentials.
            let why = match serde_json::from_slice::<TokenError>(&body) {
                Ok(e) => match e.error_description {
                    Some(d) => format!("{}: {d}", e.error),
                    None => e.error,
                },
                Err(_) => "the endpoint's answer is not an OAuth 2 error".to_string(),
            };
            return Err(failed(format!("HTTP {status}: {why}")));
        }
        let answer: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| failed(format!("the answer is not a token response: {e}")))?;
        if let Some(kind) = &answer.token_type
            && !kind.eq_ignore_ascii_case("bearer")
        {
            return Err(failed(format!(
                "the endpoint issued a `{kind}` token; only bearer tokens are supported"
            )));
        }
        if let Some(rotated) = answer.refresh_token {
            *self.refresh_token.lock().await = Some(Secret::new(rotated));
        }
        let lifetime = answer
            .expires_in
            .and_then(|n| n.as_f64())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64);
        tracing::debug!(token_url = %self.token_url, lifetime = ?lifetime, "obtained an access token");
        Ok(Token {
            access: Secret::new(answer.access_token),
            // A short-lived token is renewed halfway instead of 30 s before its end.
            renew_at: lifetime.map(|l| Instant::now() + l.saturating_sub(EXPIRY_MARGIN.min(l / 2))),
        })
    }
}

/// A header value that HTTP/2 must not index (nor logs print).
fn sensitive(value: &str) -> Result<HeaderValue> {
    let mut value = HeaderValue::from_str(value)
        .map_err(|_| Error::Unavailable("the credentials cannot be sent in a header".into()))?;
    value.set_sensitive(true);
    Ok(value)
}

/// Sets query parameter `name` of `url` to `value`, replacing any it had.
pub fn set_param(url: &mut Url, name: &str, value: &str) {
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| k != name)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let mut pairs = url.query_pairs_mut();
    pairs.clear();
    for (k, v) in &kept {
        pairs.append_pair(k, v);
    }
    pairs.append_pair(name, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_keys_are_redacted_and_replaced() {
        let auth = Auth::new(
            &AuthConfig::ApiKey {
                name: "api_key".into(),
                value: Secret::new("s3cret"),
                location: KeyLocation::Query,
            },
            "sources[0].auth",
        )
        .unwrap();
        let mut url = Url::parse("http://x/items?api_key=old&page=2").unwrap();
        set_param(&mut url, "api_key", "s3cret");
        assert_eq!(url.as_str(), "http://x/items?page=2&api_key=s3cret");
        assert_eq!(auth.redact(&url), "http://x/items?page=2&api_key=***");
    }

    #[test]
    fn oauth2_settings_are_checked() {
        let e = Auth::new(
            &AuthConfig::Oauth2 {
                token_url: "http://x/token".into(),
                grant: Grant::RefreshToken,
                client_id: "me".into(),
                client_secret: None,
                refresh_token: None,
                scope: None,
                client_auth: ClientAuth::Basic,
            },
            "sources[0].auth",
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "sources[0].auth.refresh_token: `grant: refresh_token` needs a `refresh_token`"
        );
    }
}
