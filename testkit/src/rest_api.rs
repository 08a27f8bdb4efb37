//! A JSON API on loopback that behaves like a SaaS list endpoint, for the `rest` source's
//! tests and benchmark: every pagination style, every authentication scheme (tokens that
//! expire), `updated_since` filtering, and faults on demand (429 bursts, 500s, slow or
//! malformed responses). It records the requests it receives.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};
use chrono::{DateTime, TimeZone, Utc};
use serde_json::{Map, Value, json};

/// How the API wants requests authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiAuth {
    /// Anyone may list.
    None,
    /// HTTP Basic with this user and password.
    Basic(String, String),
    /// `Authorization: Bearer <token>`.
    Bearer(String),
    /// This header carries this key.
    KeyHeader(String, String),
    /// This query parameter carries this key.
    KeyQuery(String, String),
    /// Tokens from `/oauth/token`: the client id and secret, and the refresh token it
    /// accepts (rotated at each use).
    OAuth {
        /// Client id.
        client_id: String,
        /// Client secret.
        client_secret: String,
        /// The refresh token it currently accepts.
        refresh_token: String,
    },
}

/// A fault the API answers the next request with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// This status, with `Retry-After: <seconds>` when given.
    Status(u16, Option<u64>),
    /// A body cut in the middle.
    Malformed,
    /// The answer after this long.
    Slow(Duration),
}

#[derive(Debug)]
struct State_ {
    records: Vec<Map<String, Value>>,
    auth: ApiAuth,
    faults: VecDeque<Fault>,
    /// Requests (path and query) received on list endpoints.
    requests: Vec<String>,
    /// Tokens issued, how many more requests each may make, and when each expires.
    tokens: Vec<(String, u32, Instant)>,
    /// How long tokens issued from now on last (`expires_in`).
    token_lifetime: Duration,
    /// List requests refused for their credentials.
    refused: u32,
    issued: u32,
    token_uses: u32,
    token_requests: u32,
    clock: i64,
    /// Fields added to records from this position on (a change between pages).
    extra_from: Option<(usize, String)>,
    /// How long each list request waits before it is served: a remote API's round trip.
    latency: Duration,
}

impl State_ {
    /// Lists are served in `id` order (a record whose id is not a number first).
    fn sort(&mut self) {
        self.records.sort_by_key(|r| r["id"].as_i64());
    }
}

/// The running API.
#[derive(Debug, Clone)]
pub struct SaasApi {
    state: Arc<Mutex<State_>>,
    addr: SocketAddr,
}

/// The time the first record was last updated; record `i` was updated `i` minutes later.
pub const EPOCH: i64 = 1_704_067_200; // 2024-01-01T00:00:00Z

impl SaasApi {
    /// Starts the API on a free loopback port with `count` customers.
    pub async fn start(count: usize) -> Self {
        let records = (1..=count).map(customer).collect();
        let state = Arc::new(Mutex::new(State_ {
            records,
            auth: ApiAuth::None,
            faults: VecDeque::new(),
            requests: Vec::new(),
            tokens: Vec::new(),
            issued: 0,
            token_uses: u32::MAX,
            token_requests: 0,
            clock: EPOCH + count as i64 * 60,
            extra_from: None,
            latency: Duration::ZERO,
            token_lifetime: Duration::from_secs(3600),
            refused: 0,
        }));
        let app = Router::new()
            .route("/oauth/token", post(token))
            .route("/{style}/customers", get(list).post(list))
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        SaasApi { state, addr }
    }

    /// The API's root URL, e.g. `http://127.0.0.1:1234/`.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    fn with<T>(&self, f: impl FnOnce(&mut State_) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    /// Requires this authentication from now on.
    pub fn require(&self, auth: ApiAuth) {
        self.with(|s| s.auth = auth);
    }

    /// OAuth tokens issued from now on are refused after this many list requests.
    pub fn tokens_last(&self, uses: u32) {
        self.with(|s| s.token_uses = uses);
    }

    /// OAuth tokens issued from now on expire after `lifetime` (and say so in
    /// `expires_in`).
    pub fn tokens_expire_after(&self, lifetime: Duration) {
        self.with(|s| s.token_lifetime = lifetime);
    }

    /// List requests refused so far for their credentials.
    pub fn refusals(&self) -> u32 {
        self.with(|s| s.refused)
    }

    /// Makes every list request wait `latency` before it is served, as a remote API's
    /// round trip would (the wait costs no CPU).
    pub fn set_latency(&self, latency: Duration) {
        self.with(|s| s.latency = latency);
    }

    /// Answers the next requests with these faults, in order.
    pub fn fail_next(&self, faults: impl IntoIterator<Item = Fault>) {
        self.with(|s| s.faults.extend(faults));
    }

    /// The list requests received so far (path and query), and forgets them.
    pub fn take_requests(&self) -> Vec<String> {
        self.with(|s| std::mem::take(&mut s.requests))
    }

    /// Token requests received so far.
    pub fn token_requests(&self) -> u32 {
        self.with(|s| s.token_requests)
    }

    /// Records from position `from` on carry a new field `name` (as if the API gained it
    /// while a scan was paging).
    pub fn add_field_from(&self, from: usize, name: &str) {
        self.with(|s| s.extra_from = Some((from, name.to_string())));
    }

    /// Removes `field` from every record.
    pub fn remove_field(&self, field: &str) {
        self.with(|s| {
            for r in &mut s.records {
                r.remove(field);
            }
        });
    }

    /// Changes customer `id`'s name (and its `updated_at`), or adds it if new.
    pub fn upsert(&self, id: i64, name: &str) {
        self.with(|s| {
            s.clock += 60;
            let at = rfc3339(s.clock);
            match s.records.iter_mut().find(|r| r["id"] == json!(id)) {
                Some(r) => {
                    r.insert("name".into(), json!(name));
                    r.insert("updated_at".into(), json!(at));
                }
                None => {
                    let mut r = customer(id as usize);
                    r.insert("name".into(), json!(name));
                    r.insert("updated_at".into(), json!(at));
                    s.records.push(r);
                }
            }
            s.sort();
        });
    }

    /// Replaces customer `id`'s field `field` with `value`.
    pub fn set(&self, id: i64, field: &str, value: Value) {
        self.with(|s| {
            if let Some(r) = s.records.iter_mut().find(|r| r["id"] == json!(id)) {
                r.insert(field.into(), value);
            }
            s.sort();
        });
    }
}

const TIERS: [&str; 3] = ["bronze", "silver", "gold"];

fn rfc3339(seconds: i64) -> String {
    Utc.timestamp_opt(seconds, 0)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Customer `i`: text with quotes and unicode, NULLs, a decimal as text, a nested object.
pub fn customer(i: usize) -> Map<String, Value> {
    let name = match i % 4 {
        0 => json!(format!("Zoë \"Z\" O'Brien {i}")),
        1 => json!(format!("東京 {i}")),
        2 => Value::Null,
        _ => json!(format!("Customer {i}")),
    };
    let mut r = Map::new();
    r.insert("id".into(), json!(i));
    r.insert("name".into(), name);
    r.insert("email".into(), json!(format!("c{i}@example.com")));
    r.insert("balance".into(), json!(format!("{}.{:02}", i * 3, i % 100)));
    r.insert("updated_at".into(), json!(rfc3339(EPOCH + i as i64 * 60)));
    r.insert(
        "attributes".into(),
        json!({"tier": TIERS[i % 3], "score": i as f64 / 4.0}),
    );
    r
}

fn params(query: &Option<String>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

fn param<T: std::str::FromStr>(params: &[(String, String)], name: &str) -> Option<T> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| v.parse().ok())
}

fn respond(status: StatusCode, body: String) -> Response {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .unwrap()
}

fn refuse(message: &str) -> Response {
    respond(
        StatusCode::UNAUTHORIZED,
        json!({"error": message}).to_string(),
    )
}

/// Whether the request's credentials are accepted.
fn authorize(s: &mut State_, headers: &HeaderMap, params: &[(String, String)]) -> bool {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let basic = |user: &str, password: &str| {
        use base64::Engine as _;
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        authorization == format!("Basic {encoded}")
    };
    match &s.auth {
        ApiAuth::None => true,
        ApiAuth::Basic(user, password) => basic(user, password),
        ApiAuth::Bearer(token) => authorization == format!("Bearer {token}"),
        ApiAuth::KeyHeader(name, key) => {
            headers.get(name.as_str()).and_then(|v| v.to_str().ok()) == Some(key.as_str())
        }
        ApiAuth::KeyQuery(name, key) => param::<String>(params, name).as_deref() == Some(key),
        ApiAuth::OAuth { .. } => {
            let token = authorization.strip_prefix("Bearer ").unwrap_or("");
            match s.tokens.iter_mut().find(|(t, _, _)| t == token) {
                Some((_, left, expires)) if *left > 0 && Instant::now() < *expires => {
                    *left -= 1;
                    true
                }
                _ => false,
            }
        }
    }
}

async fn token(
    State(state): State<Arc<Mutex<State_>>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let mut s = state.lock().unwrap();
    s.token_requests += 1;
    let ApiAuth::OAuth {
        client_id,
        client_secret,
        refresh_token,
    } = s.auth.clone()
    else {
        return respond(StatusCode::NOT_FOUND, "{}".into());
    };
    let form: Vec<(String, String)> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    let field = |name: &str| param::<String>(&form, name);
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    use base64::Engine as _;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{client_id}:{client_secret}"))
    );
    let client_ok = authorization == basic
        || (field("client_id").as_deref() == Some(client_id.as_str())
            && field("client_secret").as_deref() == Some(client_secret.as_str()));
    let grant_ok = match field("grant_type").as_deref() {
        Some("client_credentials") => client_ok,
        Some("refresh_token") => field("refresh_token").as_deref() == Some(refresh_token.as_str()),
        _ => false,
    };
    if !grant_ok {
        return respond(
            StatusCode::BAD_REQUEST,
            json!({"error": "invalid_grant", "error_description": "bad client or refresh token"})
                .to_string(),
        );
    }
    s.issued += 1;
    let access = format!("access-{}", s.issued);
    let uses = s.token_uses;
    let lifetime = s.token_lifetime;
    s.tokens
        .push((access.clone(), uses, Instant::now() + lifetime));
    let rotated = format!("refresh-{}", s.issued);
    if let ApiAuth::OAuth { refresh_token, .. } = &mut s.auth {
        *refresh_token = rotated.clone();
    }
    respond(
        StatusCode::OK,
        json!({"access_token": access, "token_type": "Bearer", "expires_in": lifetime.as_secs_f64(), "refresh_token": rotated})
            .to_string(),
    )
}

async fn list(
    State(state): State<Arc<Mutex<State_>>>,
    Path(style): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let params = params(&query);
    let (fault, latency) = {
        let mut s = state.lock().unwrap();
        s.requests.push(format!(
            "/{style}/customers?{}",
            query.clone().unwrap_or_default()
        ));
        (s.faults.pop_front(), s.latency)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    match fault {
        Some(Fault::Status(code, retry_after)) => {
            let mut response = respond(
                StatusCode::from_u16(code).unwrap(),
                json!({"error": "try later"}).to_string(),
            );
            if let Some(seconds) = retry_after {
                response.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from_str(&seconds.to_string()).unwrap(),
                );
            }
            return response;
        }
        Some(Fault::Slow(delay)) => tokio::time::sleep(delay).await,
        Some(Fault::Malformed) => {
            return respond(StatusCode::OK, r#"{"data": [{"id": 1, "na"#.into());
        }
        None => {}
    }
    let mut s = state.lock().unwrap();
    if !authorize(&mut s, &headers, &params) {
        s.refused += 1;
        return refuse("invalid or expired credentials");
    }
    let since = param::<String>(&params, "updated_since").map(|t| {
        DateTime::parse_from_rfc3339(&t)
            .map(|d| d.timestamp())
            .unwrap_or(i64::MIN)
    });
    // References, not copies: only the page asked for is cloned, so a large list pages
    // in linear time (the benchmark reads hundreds of thousands of records).
    let matching: Vec<&Map<String, Value>> = s
        .records
        .iter()
        .filter(|r| match since {
            None => true,
            Some(since) => r["updated_at"]
                .as_str()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .is_some_and(|d| d.timestamp() >= since),
        })
        .collect();
    let total = matching.len();
    let extra = s.extra_from.clone();
    let window = |start: usize, size: usize| -> Vec<Value> {
        matching
            .iter()
            .enumerate()
            .skip(start)
            .take(size)
            .map(|(i, r)| {
                let mut r = (*r).clone();
                if let Some((from, field)) = &extra
                    && i >= *from
                {
                    r.insert(field.clone(), json!(format!("{field}-{i}")));
                }
                Value::Object(r)
            })
            .collect()
    };
    let size = param::<usize>(&params, "limit")
        .or(param(&params, "per_page"))
        .unwrap_or(25)
        .min(1000);
    match style.as_str() {
        // {"data": [...], "total": N}
        "offset" => {
            let offset = param(&params, "offset").unwrap_or(0);
            respond(
                StatusCode::OK,
                json!({"data": window(offset, size), "total": total}).to_string(),
            )
        }
        // {"items": [...], "page": n, "total_pages": m}
        "page" => {
            let page: usize = param(&params, "page").unwrap_or(1).max(1);
            respond(
                StatusCode::OK,
                json!({"items": window((page - 1) * size, size), "page": page, "total_pages": total.div_ceil(size)})
                    .to_string(),
            )
        }
        // {"data": [...], "meta": {"next_cursor": "..."}}; the cursor is the last id.
        "cursor" => {
            let after: i64 = param::<String>(&params, "after")
                .and_then(|c| c.strip_prefix("c_").and_then(|n| n.parse().ok()))
                .unwrap_or(0);
            let start = matching
                .iter()
                .position(|r| r["id"].as_i64().unwrap() > after)
                .unwrap_or(total);
            let page = window(start, size);
            let next = (start + size < total).then(|| format!("c_{}", page.last().unwrap()["id"]));
            respond(
                StatusCode::OK,
                json!({"data": page, "meta": {"next_cursor": next}}).to_string(),
            )
        }
        // A bare array, the next page in the `Link` header.
        "link" => {
            let page: usize = param(&params, "page").unwrap_or(1).max(1);
            let mut response = respond(
                StatusCode::OK,
                Value::Array(window((page - 1) * size, size)).to_string(),
            );
            let mut links = vec![format!(
                "</link/customers?page=1&per_page={size}>; rel=\"first\""
            )];
            if page * size < total {
                links.push(format!(
                    "<http://{}/link/customers?page={}&per_page={size}>; rel=\"next\"",
                    headers
                        .get(header::HOST)
                        .and_then(|h| h.to_str().ok())
                        .unwrap_or("localhost"),
                    page + 1
                ));
            }
            response.headers_mut().insert(
                header::LINK,
                HeaderValue::from_str(&links.join(", ")).unwrap(),
            );
            response
        }
        // {"results": [...], "next": "/next/customers?start=N&limit=M" | null}
        "next" => {
            let start = param(&params, "start").unwrap_or(0);
            let next = (start + size < total)
                .then(|| format!("/next/customers?start={}&limit={size}", start + size));
            respond(
                StatusCode::OK,
                json!({"results": window(start, size), "next": next}).to_string(),
            )
        }
        _ => respond(
            StatusCode::NOT_FOUND,
            json!({"error": "no such list"}).to_string(),
        ),
    }
}
