//! `edumind-bench-baseline`: the baseline a cache hit is measured against in
//! `scripts/bench.sh` (issue 15): warp serving a body of the same size from memory.
//!
//! `GET /bytes/{n}` answers 200 with a JSON body of exactly `n` bytes, built once at
//! start for every `--size` given (404 for any other `n`), with `Content-Type:
//! application/json` and a strong `ETag`, the headers a cached data plane reply carries.
//! `GET /hello` is warp's hello world. Nothing is computed per request but the routing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use clap::Parser;
use warp::Filter;
use warp::http::{Response, StatusCode};

#[derive(Parser)]
#[command(
    name = "edumind-bench-baseline",
    about = "Serve bodies of fixed sizes from memory (benchmark baseline)"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// A body size in bytes to serve at `/bytes/{size}` (repeatable; at least 16).
    #[arg(long = "size", required = true)]
    sizes: Vec<usize>,
}

/// A JSON document of exactly `n` bytes (`n` >= 16): `{"pad":"xxxx…"}`.
fn body_of(n: usize) -> Bytes {
    let head = b"{\"pad\":\"";
    let tail = b"\"}";
    let fill = n.saturating_sub(head.len() + tail.len());
    let mut v = Vec::with_capacity(n);
    v.extend_from_slice(head);
    v.extend(std::iter::repeat_n(b'x', fill));
    v.extend_from_slice(tail);
    Bytes::from(v)
}

struct Body {
    bytes: Bytes,
    etag: String,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let bodies: Arc<HashMap<usize, Body>> = Arc::new(
        args.sizes
            .iter()
            .map(|&n| {
                let bytes = body_of(n.max(16));
                (
                    n,
                    Body {
                        etag: format!("\"baseline-{n}\""),
                        bytes,
                    },
                )
            })
            .collect(),
    );
    let bytes = warp::get()
        .and(warp::path!("bytes" / usize))
        .map(move |n: usize| match bodies.get(&n) {
            Some(b) => Response::builder()
                .header("content-type", "application/json")
                .header("etag", b.etag.as_str())
                .body(b.bytes.clone()),
            None => Response::builder()
                .status(StatusCode::NOT_FOUND)
                .body(Bytes::new()),
        })
        .map(|r: Result<Response<Bytes>, warp::http::Error>| {
            r.unwrap_or_else(|_| {
                let mut fallback = Response::new(Bytes::new());
                *fallback.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                fallback
            })
        });
    let hello = warp::get()
        .and(warp::path!("hello"))
        .map(|| "Hello, World!");
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "edumind-bench-baseline: cannot listen on {}: {e}",
                args.listen
            );
            std::process::exit(2);
        }
    };
    println!("edumind-bench-baseline listening on {}", args.listen);
    warp::serve(bytes.or(hello)).incoming(listener).run().await;
}
