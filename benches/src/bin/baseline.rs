//! The baselines the gateway is measured against, as HTTP servers built like it (hyper 1 on a
//! tokio multi-thread runtime, HTTP/1.1 keep-alive):
//!
//! - `discard`: reads each request's body whole and answers 200;
//! - `parse`: reads the body and parses it with serde_json into borrowed structs
//!   ([`benches::BorrowedEvent`]), answering 200 with the count (400 if it does not parse);
//! - `trivial`: answers every request 200 with a small fixed JSON body, for `GET /v1/assign`.
//!
//! `baseline MODE [LISTEN]` prints `listening on ADDR` once bound (LISTEN defaults to
//! 127.0.0.1:0). `vs_baselines` starts it.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

#[derive(Debug, Clone, Copy)]
enum Mode {
    Discard,
    Parse,
    Trivial,
}

async fn handle(mode: Mode, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let answer = |status: StatusCode, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("a valid response")
    };
    if let Mode::Trivial = mode {
        return Ok(answer(
            StatusCode::OK,
            r#"{"unit":"u","assignments":{"exp_0":"control"}}"#.into(),
        ));
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return Ok(answer(
                StatusCode::BAD_REQUEST,
                format!("{{\"error\":\"{e}\"}}"),
            ));
        }
    };
    Ok(match mode {
        Mode::Parse => match serde_json::from_slice::<Vec<benches::BorrowedEvent<'_>>>(&body) {
            Ok(events) => answer(
                StatusCode::OK,
                format!(
                    "{{\"accepted\":{},\"duplicates\":0,\"rejected\":[]}}",
                    events.len()
                ),
            ),
            Err(e) => answer(StatusCode::BAD_REQUEST, format!("{{\"error\":\"{e}\"}}")),
        },
        _ => answer(StatusCode::OK, format!("{{\"bytes\":{}}}", body.len())),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let mode = match args.get(1).map(String::as_str) {
        Some("discard") => Mode::Discard,
        Some("parse") => Mode::Parse,
        Some("trivial") => Mode::Trivial,
        _ => anyhow::bail!("usage: baseline discard|parse|trivial [LISTEN]"),
    };
    let listen = args.get(2).map_or("127.0.0.1:0", String::as_str);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(mode, req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
