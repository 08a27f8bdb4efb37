//! Requests to the API: pacing (requests per second, requests in flight), authentication,
//! per-request timeouts, and retries (`429` after its `Retry-After`; `5xx`, timeouts and
//! refused connections after an exponential backoff with jitter).

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use reqwest::{Client, StatusCode};
use tokio::sync::{Mutex, Semaphore};
use tributary_core::{Error, Result};
use url::Url;

use crate::auth::Auth;
use crate::config::{Method, RateLimit, RetryConfig};

/// One fetched page.
#[derive(Debug)]
pub struct Response {
    /// The URL as requested (secrets redacted).
    pub url: String,
    /// The response headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

/// The HTTP side of a source, shared by its tables' scans.
#[derive(Debug)]
pub struct Http {
    client: Client,
    headers: HeaderMap,
    auth: Auth,
    timeout: Duration,
    retry: RetryConfig,
    in_flight: Semaphore,
    pace: Option<Pace>,
}

#[derive(Debug)]
struct Pace {
    interval: Duration,
    next: Mutex<Instant>,
}

/// Why one try failed, and whether another may pass.
enum Failure {
    /// Try again after this long.
    Retry(String, Option<Duration>),
    /// The credentials were refused; try once more with fresh ones.
    Unauthorized(String),
    /// Trying again will not help.
    Fatal(Error),
}

impl Http {
    /// A client with the source's headers, authentication, timeout, pacing and retries.
    pub fn new(
        headers: HeaderMap,
        auth: Auth,
        timeout: Duration,
        rate: RateLimit,
        retry: RetryConfig,
    ) -> Result<Self> {
        let client = Client::builder()
            .user_agent(concat!("tributary/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(|e| Error::External(Box::new(e)))?;
        Ok(Http {
            client,
            headers,
            auth,
            timeout,
            retry,
            in_flight: Semaphore::new(rate.concurrency.unwrap_or(4).max(1)),
            pace: rate.requests_per_second.filter(|r| *r > 0.0).map(|r| Pace {
                interval: Duration::from_secs_f64(1.0 / r),
                next: Mutex::new(Instant::now()),
            }),
        })
    }

    /// `url` as it may be shown: without the API key if it travels in the query.
    pub fn display(&self, url: &Url) -> String {
        self.auth.redact(url)
    }

    /// Fetches `url`, trying again as the retry policy allows.
    pub async fn fetch(&self, method: Method, url: &Url) -> Result<Response> {
        let shown = self.display(url);
        let mut retries = 0u32;
        let mut renewed = false;
        loop {
            let failure = match self.try_once(method, url).await {
                Ok(response) => return Ok(response),
                Err(failure) => failure,
            };
            let wait = match failure {
                Failure::Fatal(error) => return Err(error),
                Failure::Unauthorized(why) if renewed || !self.auth.renews() => {
                    return Err(Error::Unavailable(format!("{shown}: {why}")));
                }
                Failure::Unauthorized(_) => {
                    // The token expired between our clock and the API's: renew it once.
                    renewed = true;
                    self.auth.invalidate().await;
                    continue;
                }
                Failure::Retry(why, _) if retries >= self.retry.max_retries => {
                    return Err(Error::Unavailable(format!(
                        "{shown}: {why} (gave up after {} retries)",
                        self.retry.max_retries
                    )));
                }
                Failure::Retry(why, Some(after)) => {
                    tracing::info!(url = %shown, wait = ?after, "{why}; waiting as the API asks");
                    after.min(self.retry.max_backoff)
                }
                Failure::Retry(why, None) => {
                    let wait = backoff(self.retry.backoff, self.retry.max_backoff, retries);
                    tracing::warn!(url = %shown, wait = ?wait, retry = retries + 1, "{why}; trying again");
                    wait
                }
            };
            retries += 1;
            tokio::time::sleep(wait).await;
        }
    }

    async fn try_once(&self, method: Method, url: &Url) -> Result<Response, Failure> {
        let _permit = self
            .in_flight
            .acquire()
            .await
            .map_err(|e| Failure::Fatal(Error::External(Box::new(e))))?;
        if let Some(pace) = &self.pace {
            let start = {
                let mut next = pace.next.lock().await;
                let start = (*next).max(Instant::now());
                *next = start + pace.interval;
                start
            };
            tokio::time::sleep_until(start.into()).await;
        }
        let mut url = url.clone();
        let credentials = self
            .auth
            .apply(&self.client, &mut url)
            .await
            .map_err(Failure::Fatal)?;
        let mut request = match method {
            Method::Get => self.client.get(url.clone()),
            Method::Post => self.client.post(url.clone()),
        }
        .headers(self.headers.clone())
        .timeout(self.timeout);
        if let Some((name, value)) = credentials {
            request = request.header(name, value);
        }
        let shown = self.auth.redact(&url);
        let response = request
            .send()
            .await
            .map_err(|e| transport(e, self.timeout))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .bytes()
            .await
            .map_err(|e| transport(e, self.timeout))?;
        if status.is_success() {
            return Ok(Response {
                url: shown,
                headers,
                body,
            });
        }
        let why = format!("HTTP {status}{}", snippet(&body));
        Err(match status {
            StatusCode::TOO_MANY_REQUESTS => Failure::Retry(
                why,
                Some(retry_after(&headers).unwrap_or(self.retry.backoff)),
            ),
            StatusCode::UNAUTHORIZED => Failure::Unauthorized(why),
            s if s.is_server_error() || s == StatusCode::REQUEST_TIMEOUT => {
                Failure::Retry(why, None)
            }
            _ => Failure::Fatal(Error::Unavailable(format!("{shown}: {why}"))),
        })
    }
}

/// Sorts a failure to send or read into worth retrying or not. The error's URL is dropped:
/// it may carry an API key.
fn transport(error: reqwest::Error, timeout: Duration) -> Failure {
    if error.is_timeout() {
        return Failure::Retry(format!("no complete response within {timeout:?}"), None);
    }
    let retry = error.is_connect() || error.is_request() || error.is_body();
    let why = error_chain(&error.without_url());
    if retry {
        Failure::Retry(why, None)
    } else {
        Failure::Fatal(Error::Unavailable(why))
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The start of an error response's body, which usually says what was wrong.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return String::new();
    }
    let cut: String = text.chars().take(300).collect();
    let more = if cut.len() < text.len() { "…" } else { "" };
    format!(": {cut}{more}")
}

/// `Retry-After` as seconds or as an HTTP date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or_default())
}

/// The wait before retry `attempt + 1`: `base` doubled per attempt, at most `max`, with
/// ±50 % jitter so that scans failing together do not retry together.
fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    let doubled = base.saturating_mul(1u32 << attempt.min(20)).min(max);
    doubled
        .mul_f64(0.5 + tributary_core::random_fraction())
        .min(max)
}

/// Headers from config, checked.
pub fn header_map(
    headers: &std::collections::BTreeMap<String, String>,
) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("`{name}` is not a valid header name"))?;
        let value = HeaderValue::from_str(value)
            .map_err(|_| format!("the value of header `{name}` is not valid in a header"))?;
        map.insert(name, value);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(3)));
        let later = SystemTime::now() + Duration::from_secs(120);
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_str(&httpdate::fmt_http_date(later)).unwrap(),
        );
        let wait = retry_after(&headers).unwrap();
        assert!(wait > Duration::from_secs(100) && wait <= Duration::from_secs(120));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn backoff_doubles_within_its_cap() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        for attempt in 0..40 {
            let wait = backoff(base, max, attempt);
            let full = base.saturating_mul(1 << attempt.min(20)).min(max);
            assert!(
                wait >= full / 2 && wait <= full.mul_f64(1.5).min(max),
                "{attempt}: {wait:?}"
            );
        }
    }
}
