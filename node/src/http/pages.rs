//! The demo pages: plain HTML/CSS/JS from `node/static/`, embedded in the binary with
//! `include_bytes!` (no build step, nothing read from disk at run time).
//!
//! Routes: `/` (and `/index.html`), `/orders`, `/chat`, `/stream`, `/cluster` (each also as
//! `<name>.html`) and `/static/{path}` for the shared assets, among them the vendored
//! Socket.IO client at `/static/vendor/socket.io.min.js` (socketioxide owns `/socket.io/`).
//!
//! Caching: every response carries a strong `ETag` (SHA-256 of the content) and honours
//! `If-None-Match` with 304. Pages are `no-cache` (always revalidated); assets may be cached
//! for an hour. Pages also carry a Content-Security-Policy that allows only same-origin
//! scripts and styles, so even a missed escape could not run injected script.

use std::collections::HashMap;
use std::sync::OnceLock;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

use crate::error::AppError;

const HTML: &str = "text/html; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const SVG: &str = "image/svg+xml";
const TEXT: &str = "text/plain; charset=utf-8";

/// Cache policy of pages: always revalidate (the `ETag` makes that a cheap 304).
const PAGE_CACHE: &str = "no-cache";
/// Cache policy of `/static/` assets.
const ASSET_CACHE: &str = "public, max-age=3600";

/// Same-origin scripts, styles and connections only; images may come from anywhere over
/// https (Gravatar, stream profile pictures).
const PAGE_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' https: data:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

/// One embedded file.
struct Asset {
    body: &'static [u8],
    content_type: &'static str,
}

macro_rules! embed {
    ($path:literal, $content_type:expr) => {
        (
            $path,
            Asset {
                body: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/static/", $path)),
                content_type: $content_type,
            },
        )
    };
}

/// Every embedded file, by its path under `node/static/`.
const ASSETS: &[(&str, Asset)] = &[
    embed!("index.html", HTML),
    embed!("orders.html", HTML),
    embed!("chat.html", HTML),
    embed!("stream.html", HTML),
    embed!("cluster.html", HTML),
    embed!("style.css", CSS),
    embed!("app.js", JS),
    embed!("index.js", JS),
    embed!("orders.js", JS),
    embed!("chat.js", JS),
    embed!("stream.js", JS),
    embed!("cluster.js", JS),
    embed!("favicon.svg", SVG),
    embed!("vendor/socket.io.min.js", JS),
    embed!("vendor/socket.io-client.LICENSE", TEXT),
];

/// The pages: route path → file.
const PAGES: &[(&str, &str)] = &[
    ("/", "index.html"),
    ("/index.html", "index.html"),
    ("/orders", "orders.html"),
    ("/orders.html", "orders.html"),
    ("/chat", "chat.html"),
    ("/chat.html", "chat.html"),
    ("/stream", "stream.html"),
    ("/stream.html", "stream.html"),
    ("/cluster", "cluster.html"),
    ("/cluster.html", "cluster.html"),
];

/// Embedded files with their ETags, computed once.
fn catalog() -> &'static HashMap<&'static str, (&'static Asset, HeaderValue)> {
    static CATALOG: OnceLock<HashMap<&'static str, (&'static Asset, HeaderValue)>> =
        OnceLock::new();
    CATALOG.get_or_init(|| {
        ASSETS
            .iter()
            .map(|(path, asset)| {
                let digest = Sha256::digest(asset.body);
                let etag = format!("\"{}\"", hex::encode(&digest[..12]));
                let etag = HeaderValue::from_str(&etag)
                    .unwrap_or_else(|_| HeaderValue::from_static("\"0\""));
                (*path, (asset, etag))
            })
            .collect()
    })
}

/// The routes of the demo pages and their assets (merged into [`super::router`]).
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let mut router = Router::new();
    for (route, file) in PAGES {
        let file: &'static str = file;
        router = router.route(route, get(move |headers: HeaderMap| page(file, headers)));
    }
    router.route("/static/{*path}", get(static_asset))
}

async fn page(file: &'static str, headers: HeaderMap) -> Response {
    serve(file, &headers, PAGE_CACHE)
}

async fn static_asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    // Only assets are served here, not the pages (they have their own routes).
    if path.ends_with(".html") {
        return AppError::not_found("no such file").into_response();
    }
    serve(&path, &headers, ASSET_CACHE)
}

fn serve(path: &str, headers: &HeaderMap, cache: &'static str) -> Response {
    let Some((asset, etag)) = catalog().get(path) else {
        return AppError::not_found("no such file").into_response();
    };
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .map(str::trim)
                .any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag)
        });
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            )],
            asset.body,
        )
            .into_response()
    };
    let out = response.headers_mut();
    out.insert(header::ETAG, etag.clone());
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    out.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if asset.content_type == HTML {
        out.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(PAGE_CSP),
        );
        out.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_page_is_embedded() {
        for (_, file) in PAGES {
            assert!(catalog().contains_key(file), "{file}");
        }
    }

    #[test]
    fn pages_reference_only_embedded_assets() {
        for (path, asset) in ASSETS {
            if asset.content_type != HTML {
                continue;
            }
            let text = std::str::from_utf8(asset.body).expect("utf-8 page");
            for part in text.split("\"/static/").skip(1) {
                let referenced = part.split('"').next().unwrap_or("");
                assert!(
                    catalog().contains_key(referenced),
                    "{path} references missing /static/{referenced}"
                );
            }
            assert!(!text.contains(" style=\""), "{path}: inline style (CSP)");
            assert!(!text.contains("<script>"), "{path}: inline script (CSP)");
        }
    }

    #[test]
    fn no_inner_html_in_scripts() {
        for (path, asset) in ASSETS {
            if asset.content_type != JS || path.starts_with("vendor/") {
                continue;
            }
            let text = std::str::from_utf8(asset.body).expect("utf-8 script");
            for sink in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
            ] {
                assert!(!text.contains(sink), "{path} uses {sink}");
            }
        }
    }

    #[test]
    fn not_modified_on_matching_etag() {
        let (_, etag) = catalog().get("style.css").expect("style.css");
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_NONE_MATCH, etag.clone());
        let response = serve("style.css", &headers, ASSET_CACHE);
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
        let response = serve("style.css", &HeaderMap::new(), ASSET_CACHE);
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/css; charset=utf-8"
        );
        assert_eq!(response.headers()[header::CACHE_CONTROL], ASSET_CACHE);
    }
}
