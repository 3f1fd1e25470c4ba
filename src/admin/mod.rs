//! The admin listener (own port, loopback by default): the operator's API under `/api/v1/`
//! (documented in `docs/openapi.json`), and `/status`, `/metrics`, `/healthz`.

pub mod api;
pub mod audit;
pub mod command;
pub mod schema;
pub mod status;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use api::Admin;
use audit::Caller;
use http_body_util::BodyExt;

fn reply(status: StatusCode, ctype: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(ctype),
    );
    r
}

/// Matches a request path against a route pattern (`{name}` is one path segment).
fn matches(pattern: &str, path: &str) -> bool {
    let mut p = pattern.split('/');
    let mut q = path.split('/');
    loop {
        match (p.next(), q.next()) {
            (None, None) => return true,
            (Some(a), Some(b)) if a.starts_with('{') && !b.is_empty() => {}
            (Some(a), Some(b)) if a == b => {}
            _ => return false,
        }
    }
}

fn json_reply(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let text = serde_json::to_vec_pretty(body).unwrap_or_default();
    reply(status, "application/json", text)
}

async fn route(
    admin: Arc<Admin>,
    peer: std::net::SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let known_path = api::ROUTES.iter().any(|(_, p)| matches(p, &path));
    let Some(&(_, pattern)) = api::ROUTES
        .iter()
        .find(|(m, p)| *m == method && matches(p, &path))
    else {
        return Ok(if known_path {
            json_reply(
                StatusCode::METHOD_NOT_ALLOWED,
                &serde_json::json!({ "error": format!("{method} is not allowed on {path}") }),
            )
        } else {
            json_reply(
                StatusCode::NOT_FOUND,
                &serde_json::json!({ "error": format!("no route {path}: see /api/v1/openapi.json") }),
            )
        });
    };
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let token = admin.caller(auth);
    let write = method != "GET";
    // Probes and the dashboard's static files need no token (the page asks for one itself).
    let probe = matches!(
        pattern,
        "/healthz" | "/readyz" | "/" | "/dashboard/uplot.js" | "/dashboard/uplot.css"
    );
    if (write || admin.reads_need_token) && !probe && token.is_none() {
        let mut r = json_reply(
            StatusCode::UNAUTHORIZED,
            &serde_json::json!({ "error": if auth.is_some() { "unknown token" } else { "a bearer token is required (Authorization: Bearer <token>)" } }),
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        if write {
            let caller = Caller {
                token: "none".into(),
                peer,
            };
            admin.audit.record(
                &caller,
                &format!("{method} {path}"),
                serde_json::Value::Null,
                serde_json::Value::Null,
                "401: not authorised",
            );
        }
        return Ok(r);
    }
    let shared = &admin.shared;
    Ok(match pattern {
        "/status" | "/api/v1/status" => json_reply(StatusCode::OK, &status::status(shared)),
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            shared.metrics.render(),
        ),
        "/" => reply(
            StatusCode::OK,
            "text/html; charset=utf-8",
            include_str!("dashboard/index.html"),
        ),
        "/dashboard/uplot.js" => reply(
            StatusCode::OK,
            "application/javascript",
            include_str!("dashboard/uPlot.iife.min.js"),
        ),
        "/dashboard/uplot.css" => reply(
            StatusCode::OK,
            "text/css",
            include_str!("dashboard/uPlot.min.css"),
        ),
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n"),
        "/readyz" => {
            let snap = shared.snapshot.load();
            let now = shared.clock.now_ms();
            let all_ejected = snap.compiled.clusters.iter().all(|c| {
                c.endpoints
                    .load()
                    .endpoints
                    .iter()
                    .all(|e| e.is_ejected(now))
            });
            if shared.draining.load(std::sync::atomic::Ordering::Relaxed) {
                reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "draining\n")
            } else if all_ejected {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "not ready: every upstream endpoint of every cluster is ejected\n",
                )
            } else {
                reply(StatusCode::OK, "text/plain", "ready\n")
            }
        }
        "/api/v1/config" => json_reply(
            StatusCode::OK,
            &crate::config::summary_json(
                &shared.snapshot.load().compiled.config,
                admin
                    .config_path
                    .as_deref()
                    .unwrap_or(std::path::Path::new("")),
            ),
        ),
        "/api/v1/history" => {
            let want = req.uri().query().and_then(|q| {
                q.split('&')
                    .find_map(|kv| kv.strip_prefix("cluster="))
                    .map(str::to_string)
            });
            let snap = shared.snapshot.load();
            let c = &snap.compiled;
            let found = match &want {
                None => c.clusters.first(),
                Some(name) => c.cluster(name).and_then(|i| c.clusters.get(i)),
            };
            match found {
                Some(cluster) => json_reply(
                    StatusCode::OK,
                    &serde_json::json!({
                        "cluster": cluster.config.name,
                        "points": cluster.state.history.points(),
                    }),
                ),
                None => json_reply(
                    StatusCode::NOT_FOUND,
                    &serde_json::json!({ "error": format!("no cluster {:?} (clusters: {})", want.unwrap_or_default(), c.cluster_names()) }),
                ),
            }
        }
        "/api/v1/audit" => json_reply(
            StatusCode::OK,
            &serde_json::json!({ "entries": admin.audit.last(200) }),
        ),
        "/api/v1/openapi.json" => reply(StatusCode::OK, "application/json", api::OPENAPI),
        _ => {
            let body = match http_body_util::Limited::new(req.into_body(), 64 * 1024)
                .collect()
                .await
            {
                Ok(b) => b.to_bytes(),
                Err(e)
                    if e.downcast_ref::<http_body_util::LengthLimitError>()
                        .is_some() =>
                {
                    return Ok(json_reply(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        &serde_json::json!({ "error": "the body is over 64 KiB" }),
                    ))
                }
                Err(_) => {
                    return Ok(json_reply(
                        StatusCode::BAD_REQUEST,
                        &serde_json::json!({ "error": "the body could not be read" }),
                    ))
                }
            };
            let caller = Caller {
                token: token.unwrap_or_default(),
                peer,
            };
            let (status, body) = admin.write(&caller, &method, &path, &body);
            json_reply(status, &body)
        }
    })
}

/// Serves the admin API until the task is dropped.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            // Out of descriptors and the like: back off instead of spinning.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            continue;
        };
        let admin = Arc::clone(&admin);
        tokio::spawn(async move {
            let svc = service_fn(move |req| route(Arc::clone(&admin), peer, req));
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
