//! The `rest` source against the SaaS-like API of the tests, on loopback: pages/s, rows/s
//! and MB/s of a full scan (every column, and two columns), beside the ceiling (the same
//! pages fetched and thrown away) and a hand-written reader that parses each page into
//! `serde_json::Value`s (no Arrow). All in one run, each timed `--runs` times (median),
//! the runs taking turns.
//!
//! `--latency-ms N` makes the API wait that long before each page, as a remote API's round
//! trip does: on loopback the API's own work and the decoding share the CPU, with a
//! round trip the scan's decoding can hide behind the wait for the next page.
//!
//! `cargo bench --bench rest_api -- [--records N] [--page-size N] [--runs N] [--latency-ms N]`

use std::time::{Duration, Instant};

use datafusion::prelude::SessionContext;
use futures::TryStreamExt;
use tributary::{Config, Engine};
use tributary_testkit::rest_api::SaasApi;

struct Args {
    records: usize,
    page_size: usize,
    runs: usize,
    latency_ms: u64,
}

fn args() -> Args {
    let mut args = Args {
        records: 200_000,
        page_size: 1_000,
        runs: 3,
        latency_ms: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().and_then(|v| v.parse().ok()).expect("a number");
        match flag.as_str() {
            "--records" => args.records = value(),
            "--page-size" => args.page_size = value(),
            "--runs" => args.runs = value(),
            "--latency-ms" => args.latency_ms = value() as u64,
            // `cargo bench` passes `--bench`.
            _ => {}
        }
    }
    args
}

/// What one contender read in one run.
struct Outcome {
    pages: usize,
    rows: usize,
    bytes: usize,
    elapsed: Duration,
}

/// Fetches every page and keeps only its size: the server's and HTTP's share of a scan.
async fn ceiling(client: &reqwest::Client, base: &str, page_size: usize, parse: bool) -> Outcome {
    let started = Instant::now();
    let (mut pages, mut rows, mut bytes, mut offset) = (0, 0, 0, 0);
    loop {
        let url = format!("{base}offset/customers?limit={page_size}&offset={offset}");
        let body = client
            .get(&url)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        pages += 1;
        bytes += body.len();
        let n = if parse {
            let page: serde_json::Value = serde_json::from_slice(&body).unwrap();
            page["data"].as_array().map_or(0, Vec::len)
        } else {
            // Count the records without parsing: each has one `"id":`.
            body.windows(5).filter(|w| w == b"\"id\":").count()
        };
        if n == 0 {
            break;
        }
        rows += n;
        offset += n;
    }
    Outcome {
        pages,
        rows,
        bytes,
        elapsed: started.elapsed(),
    }
}

async fn tributary(ctx: &SessionContext, sql: &str, page_size: usize) -> Outcome {
    let started = Instant::now();
    let stream = ctx.sql(sql).await.unwrap().execute_stream().await.unwrap();
    let rows: usize = stream
        .try_fold(0, |n, b| async move { Ok(n + b.num_rows()) })
        .await
        .unwrap();
    Outcome {
        pages: rows.div_ceil(page_size) + 1,
        rows,
        bytes: 0,
        elapsed: started.elapsed(),
    }
}

fn median(mut outcomes: Vec<Outcome>) -> Outcome {
    outcomes.sort_by_key(|o| o.elapsed);
    outcomes.swap_remove(outcomes.len() / 2)
}

#[tokio::main]
async fn main() {
    let args = args();
    let api = SaasApi::start(args.records).await;
    api.set_latency(Duration::from_millis(args.latency_ms));
    let base = api.url();
    let dir = tempfile::TempDir::new().unwrap();
    let yaml = format!(
        "sources:\n  - name: api\n    kind: rest\n    base_url: {base}\n    tables:\n      - name: customers\n        path: offset/customers\n        records: $.data\n        pagination: {{type: offset, page_size: {}}}\n        columns:\n          - {{name: id, type: bigint, nullable: false}}\n          - {{name: name, type: text}}\n          - {{name: email, type: text}}\n          - {{name: balance, type: 'decimal(12,2)'}}\n          - {{name: updated_at, type: timestamp with time zone}}\n          - {{name: tier, path: $.attributes.tier, type: text}}\n          - {{name: score, path: $.attributes.score, type: double}}\n",
        args.page_size
    );
    let path = dir.path().join("tributary.yaml");
    std::fs::write(&path, yaml).unwrap();
    let engine = Engine::new(&Config::load(&path).unwrap()).unwrap();
    let ctx = engine.context();
    let client = reqwest::Client::new();

    let mut table = String::from(
        "| contender | pages/s | M rows/s | MB/s (JSON) | median s | vs ceiling |\n| --- | ---: | ---: | ---: | ---: | ---: |\n",
    );
    let page_bytes = ceiling(&client, &base, args.page_size, false).await.bytes;
    let mut ceiling_s = None;
    let contenders: Vec<(&str, usize)> = vec![
        ("HTTP only, bodies dropped (ceiling)", 0),
        ("serde_json::Value per page (hand-written reader)", 1),
        ("tributary: SELECT * (7 columns)", 2),
        ("tributary: SELECT id, updated_at", 3),
    ];
    // Runs go round the contenders, so a machine that slows down mid-benchmark slows
    // every contender alike rather than the last ones.
    let mut outcomes: Vec<Vec<Outcome>> = contenders.iter().map(|_| Vec::new()).collect();
    for _ in 0..args.runs {
        for (&(_, which), outcomes) in contenders.iter().zip(&mut outcomes) {
            outcomes.push(match which {
                0 => ceiling(&client, &base, args.page_size, false).await,
                1 => ceiling(&client, &base, args.page_size, true).await,
                2 => tributary(ctx, "SELECT * FROM api.main.customers", args.page_size).await,
                _ => {
                    tributary(
                        ctx,
                        "SELECT id, updated_at FROM api.main.customers",
                        args.page_size,
                    )
                    .await
                }
            });
        }
    }
    for ((name, _), outcomes) in contenders.into_iter().zip(outcomes) {
        let o = median(outcomes);
        assert_eq!(o.rows, args.records, "{name} read every record");
        let s = o.elapsed.as_secs_f64();
        let ceiling = *ceiling_s.get_or_insert(s);
        let bytes = if o.bytes > 0 { o.bytes } else { page_bytes };
        table.push_str(&format!(
            "| {name} | {:.0} | {:.2} | {:.0} | {s:.2} | {:.2}x |\n",
            o.pages as f64 / s,
            o.rows as f64 / s / 1e6,
            bytes as f64 / s / 1e6,
            ceiling / s
        ));
    }
    println!(
        "{} records in pages of {} ({:.1} MB of JSON), {} ms added per page, median of {} runs\n\n{table}",
        args.records,
        args.page_size,
        page_bytes as f64 / 1e6,
        args.latency_ms,
        args.runs
    );
    let out = std::env::var("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| "target".into())
        .join("bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("rest_api.md"), &table).unwrap();
}
