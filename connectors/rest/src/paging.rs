//! Pagination: which URL a scan asks for next, and when it stops.
//!
//! Every style stops at an empty page and after `max_pages`; each also stops where its
//! API says the list ends (no next cursor, link or URL; the reported total reached).

use reqwest::header::{HeaderMap, LINK};
use tributary_core::{Error, Result};
use url::Url;

use crate::auth::set_param;
use crate::config::Pagination;
use crate::jsonpath::JsonPath;

/// A table's pagination, checked.
#[derive(Debug, Clone)]
pub struct Paging {
    style: Style,
    max_pages: Option<usize>,
}

#[derive(Debug, Clone)]
enum Style {
    None,
    Offset {
        offset_param: String,
        limit_param: String,
        page_size: usize,
        total: Option<JsonPath>,
        stop_short: bool,
    },
    Page {
        page_param: String,
        first: usize,
        size: Option<(String, usize)>,
        total_pages: Option<JsonPath>,
        stop_short: bool,
    },
    Cursor {
        path: JsonPath,
        param: String,
        has_more: Option<JsonPath>,
        size: Option<(String, usize)>,
    },
    Link {
        size: Option<(String, usize)>,
    },
    NextUrl {
        path: JsonPath,
        size: Option<(String, usize)>,
    },
}

/// Where one scan is in its pages.
#[derive(Debug)]
pub struct Pager {
    paging: Paging,
    /// The first page's URL (the table's endpoint with its parameters and filters).
    first: Url,
    next: Option<Url>,
    pages: usize,
    offset: usize,
    page: usize,
    last_cursor: Option<String>,
}

impl Paging {
    /// Checks `config`; `key` is its config key, for errors.
    pub fn new(config: &Pagination, key: &str) -> Result<Self> {
        let path = |field: &str, text: &str| {
            JsonPath::parse(text).map_err(|m| Error::config(format!("{key}.{field}"), m))
        };
        let optional = |field: &str, text: &Option<String>| {
            text.as_deref().map(|t| path(field, t)).transpose()
        };
        let size = |param: &Option<String>, size: &Option<usize>| -> Result<_> {
            match (param, size) {
                (Some(p), Some(n)) if *n > 0 => Ok(Some((p.clone(), *n))),
                (Some(_), _) => Err(Error::config(
                    format!("{key}.page_size"),
                    "`size_param` needs a `page_size` of 1 or more",
                )),
                (None, Some(_)) => Err(Error::config(
                    format!("{key}.size_param"),
                    "`page_size` needs the `size_param` it is sent as",
                )),
                (None, None) => Ok(None),
            }
        };
        let (style, max_pages) = match config {
            Pagination::None => (Style::None, None),
            Pagination::Offset {
                offset_param,
                limit_param,
                page_size,
                total_path,
                stop_on_short_page,
                max_pages,
            } => {
                if *page_size == 0 {
                    return Err(Error::config(
                        format!("{key}.page_size"),
                        "must be 1 or more",
                    ));
                }
                (
                    Style::Offset {
                        offset_param: offset_param.clone(),
                        limit_param: limit_param.clone(),
                        page_size: *page_size,
                        total: optional("total_path", total_path)?,
                        stop_short: *stop_on_short_page,
                    },
                    *max_pages,
                )
            }
            Pagination::Page {
                page_param,
                first_page,
                size_param,
                page_size,
                total_pages_path,
                stop_on_short_page,
                max_pages,
            } => (
                Style::Page {
                    page_param: page_param.clone(),
                    first: *first_page,
                    size: size(size_param, page_size)?,
                    total_pages: optional("total_pages_path", total_pages_path)?,
                    stop_short: *stop_on_short_page,
                },
                *max_pages,
            ),
            Pagination::Cursor {
                cursor_path,
                cursor_param,
                has_more_path,
                size_param,
                page_size,
                max_pages,
            } => (
                Style::Cursor {
                    path: path("cursor_path", cursor_path)?,
                    param: cursor_param.clone(),
                    has_more: optional("has_more_path", has_more_path)?,
                    size: size(size_param, page_size)?,
                },
                *max_pages,
            ),
            Pagination::Link {
                size_param,
                page_size,
                max_pages,
            } => (
                Style::Link {
                    size: size(size_param, page_size)?,
                },
                *max_pages,
            ),
            Pagination::NextUrl {
                next_path,
                size_param,
                page_size,
                max_pages,
            } => (
                Style::NextUrl {
                    path: path("next_path", next_path)?,
                    size: size(size_param, page_size)?,
                },
                *max_pages,
            ),
        };
        if max_pages == Some(0) {
            return Err(Error::config(
                format!("{key}.max_pages"),
                "must be 1 or more",
            ));
        }
        Ok(Paging { style, max_pages })
    }

    /// The style's name, for plans.
    pub fn name(&self) -> &'static str {
        match self.style {
            Style::None => "none",
            Style::Offset { .. } => "offset",
            Style::Page { .. } => "page",
            Style::Cursor { .. } => "cursor",
            Style::Link { .. } => "link",
            Style::NextUrl { .. } => "next_url",
        }
    }

    /// Pages asked at once, if the API is told a size.
    fn size(&self) -> Option<(&str, usize)> {
        match &self.style {
            Style::None => None,
            Style::Offset {
                limit_param,
                page_size,
                ..
            } => Some((limit_param, *page_size)),
            Style::Page { size, .. }
            | Style::Cursor { size, .. }
            | Style::Link { size }
            | Style::NextUrl { size, .. } => size.as_ref().map(|(p, n)| (p.as_str(), *n)),
        }
    }

    /// Starts a scan at `first` (the endpoint with its parameters). With `limit`, pages
    /// are asked no larger than the rows wanted.
    pub fn start(&self, mut first: Url, limit: Option<usize>) -> Pager {
        if let Some((param, size)) = self.size() {
            let size = limit.map_or(size, |l| size.min(l.max(1)));
            set_param(&mut first, param, &size.to_string());
        }
        let mut pager = Pager {
            paging: self.clone(),
            next: None,
            pages: 0,
            offset: 0,
            page: 0,
            last_cursor: None,
            first: first.clone(),
        };
        pager.next = Some(match &self.style {
            Style::Offset { offset_param, .. } => {
                set_param(&mut first, offset_param, "0");
                first
            }
            Style::Page {
                page_param,
                first: n,
                ..
            } => {
                pager.page = *n;
                set_param(&mut first, page_param, &n.to_string());
                first
            }
            _ => first,
        });
        pager
    }
}

impl Pager {
    /// The next page's URL; `None` once the list has ended.
    pub fn next(&self) -> Option<&Url> {
        self.next.as_ref()
    }

    /// Pages fetched so far.
    pub fn pages(&self) -> usize {
        self.pages
    }

    /// Moves past the page just fetched from `url`, which held `records` records.
    pub fn advance(
        &mut self,
        url: &Url,
        headers: &HeaderMap,
        body: &[u8],
        records: usize,
    ) -> Result<(), String> {
        self.pages += 1;
        self.next = None;
        if records == 0 || self.paging.max_pages.is_some_and(|m| self.pages >= m) {
            return Ok(());
        }
        let mut next = self.first.clone();
        match &self.paging.style {
            Style::None => return Ok(()),
            Style::Offset {
                offset_param,
                page_size,
                total,
                stop_short,
                ..
            } => {
                self.offset += records;
                if *stop_short && records < *page_size {
                    return Ok(());
                }
                if let Some(total) = total
                    && let Some(total) = number_at(total, body)?
                    && self.offset as u64 >= total
                {
                    return Ok(());
                }
                set_param(&mut next, offset_param, &self.offset.to_string());
            }
            Style::Page {
                page_param,
                first,
                size,
                total_pages,
                stop_short,
            } => {
                if *stop_short && size.as_ref().is_some_and(|(_, n)| records < *n) {
                    return Ok(());
                }
                if let Some(total) = total_pages
                    && let Some(total) = number_at(total, body)?
                    && (self.page + 1 - first) as u64 >= total
                {
                    return Ok(());
                }
                self.page += 1;
                set_param(&mut next, page_param, &self.page.to_string());
            }
            Style::Cursor {
                path,
                param,
                has_more,
                ..
            } => {
                if let Some(has_more) = has_more
                    && text_at(has_more, body)?.as_deref() != Some("true")
                {
                    return Ok(());
                }
                let Some(cursor) = text_at(path, body)?.filter(|c| !c.is_empty()) else {
                    return Ok(());
                };
                if self.last_cursor.as_deref() == Some(cursor.as_str()) {
                    return Err(format!(
                        "the API returned the same cursor twice (`{cursor}` at {path}); stopping rather than reading the same page forever"
                    ));
                }
                set_param(&mut next, param, &cursor);
                self.last_cursor = Some(cursor);
            }
            Style::Link { .. } => {
                let Some(link) = next_link(headers) else {
                    return Ok(());
                };
                next = url
                    .join(&link)
                    .map_err(|e| format!("the `Link` header's next page `{link}`: {e}"))?;
            }
            Style::NextUrl { path, .. } => {
                let Some(link) = text_at(path, body)?.filter(|l| !l.is_empty()) else {
                    return Ok(());
                };
                next = url
                    .join(&link)
                    .map_err(|e| format!("the next page's URL `{link}` (at {path}): {e}"))?;
            }
        }
        if &next == url {
            return Err(format!(
                "the API pointed to the page just read ({next}) as the next one; stopping rather than reading it forever"
            ));
        }
        self.next = Some(next);
        Ok(())
    }
}

/// The scalar at `path` as text (strings unquoted); `None` when absent or null.
fn text_at(path: &JsonPath, body: &[u8]) -> Result<Option<String>, String> {
    let Some(value) = path.find(body)? else {
        return Ok(None);
    };
    match value.first() {
        Some(b'"') => serde_json::from_slice::<String>(value)
            .map(Some)
            .map_err(|e| format!("the string at {path}: {e}")),
        Some(b'n') => Ok(None),
        Some(b'{' | b'[') => Err(format!(
            "{path} names an object or array, not a single value"
        )),
        _ => Ok(Some(String::from_utf8_lossy(value).into_owned())),
    }
}

/// The whole number at `path`, if there is one.
fn number_at(path: &JsonPath, body: &[u8]) -> Result<Option<u64>, String> {
    match text_at(path, body)? {
        None => Ok(None),
        Some(text) => text
            .parse::<u64>()
            .map(Some)
            .map_err(|_| format!("{path} holds `{text}`, not a whole number")),
    }
}

/// The target of the `rel="next"` link of the `Link` headers (RFC 8288).
pub fn next_link(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(LINK)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|value| {
            links(value).into_iter().find_map(|(target, rels)| {
                rels.split_ascii_whitespace()
                    .any(|r| r.eq_ignore_ascii_case("next"))
                    .then_some(target)
            })
        })
}

/// The links of one `Link` header value, as (target, rel).
fn links(value: &str) -> Vec<(String, String)> {
    let mut links = Vec::new();
    let mut rest = value;
    while let Some(open) = rest.find('<') {
        let Some(close) = rest[open..].find('>').map(|c| open + c) else {
            break;
        };
        let target = rest[open + 1..close].trim().to_string();
        rest = &rest[close + 1..];
        // Parameters run to the next `,` outside quotes.
        let mut end = rest.len();
        let mut quoted = false;
        for (i, c) in rest.char_indices() {
            match c {
                '"' => quoted = !quoted,
                ',' if !quoted => {
                    end = i;
                    break;
                }
                _ => {}
            }
        }
        let params = &rest[..end];
        rest = &rest[end..];
        let rel = params.split(';').find_map(|p| {
            let (name, value) = p.split_once('=')?;
            name.trim()
                .eq_ignore_ascii_case("rel")
                .then(|| value.trim().trim_matches('"').to_string())
        });
        links.push((target, rel.unwrap_or_default()));
    }
    links
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    #[test]
    fn link_headers_give_the_next_page() {
        let mut headers = HeaderMap::new();
        headers.append(
            LINK,
            HeaderValue::from_static(
                r#"<https://api.x/items?page=1>; rel="first", <https://api.x/items?page=3&q=a,b>; title="x, y"; rel="prev next""#,
            ),
        );
        assert_eq!(
            next_link(&headers).as_deref(),
            Some("https://api.x/items?page=3&q=a,b")
        );
        let mut headers = HeaderMap::new();
        headers.append(LINK, HeaderValue::from_static(r#"</items?c=9>; rel=next"#));
        assert_eq!(next_link(&headers).as_deref(), Some("/items?c=9"));
        headers.insert(
            LINK,
            HeaderValue::from_static(r#"</items?c=1>; rel="prev""#),
        );
        assert_eq!(next_link(&headers), None);
    }

    #[test]
    fn offsets_advance_by_the_records_received_and_stop_at_the_total() {
        let paging = Paging::new(
            &Pagination::Offset {
                offset_param: "offset".into(),
                limit_param: "limit".into(),
                page_size: 100,
                total_path: Some("$.total".into()),
                stop_on_short_page: false,
                max_pages: None,
            },
            "t",
        )
        .unwrap();
        let first = Url::parse("http://x/items?q=1").unwrap();
        let mut pager = paging.start(first, Some(30));
        let url = pager.next().unwrap().clone();
        assert_eq!(url.as_str(), "http://x/items?q=1&limit=30&offset=0");
        let headers = HeaderMap::new();
        pager
            .advance(&url, &headers, br#"{"total": 50}"#, 30)
            .unwrap();
        let url = pager.next().unwrap().clone();
        assert_eq!(url.as_str(), "http://x/items?q=1&limit=30&offset=30");
        pager
            .advance(&url, &headers, br#"{"total": 50}"#, 20)
            .unwrap();
        assert!(pager.next().is_none());
    }

    #[test]
    fn cursors_stop_when_missing_and_refuse_to_loop() {
        let paging = Paging::new(
            &Pagination::Cursor {
                cursor_path: "$.meta.next".into(),
                cursor_param: "after".into(),
                has_more_path: None,
                size_param: None,
                page_size: None,
                max_pages: Some(10),
            },
            "t",
        )
        .unwrap();
        let mut pager = paging.start(Url::parse("http://x/i").unwrap(), None);
        let headers = HeaderMap::new();
        let url = pager.next().unwrap().clone();
        pager
            .advance(&url, &headers, br#"{"meta": {"next": "a b"}}"#, 5)
            .unwrap();
        let url = pager.next().unwrap().clone();
        assert_eq!(url.as_str(), "http://x/i?after=a+b");
        let e = pager
            .advance(&url, &headers, br#"{"meta": {"next": "a b"}}"#, 5)
            .unwrap_err();
        assert!(e.contains("same cursor twice"), "{e}");
        pager
            .advance(&url, &headers, br#"{"meta": {"next": null}}"#, 5)
            .unwrap();
        assert!(pager.next().is_none());
    }
}
