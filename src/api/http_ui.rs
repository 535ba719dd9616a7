//! The web UI every node serves at `/`: one HTML page, its script and its style sheet, plain files under
//! `src/api/ui/` compiled into the binary (no bundler, no external assets, so it works offline). The page talks to
//! the node that served it: `/api/cluster/nodes`, `/api/workflow/search`, `/api/workflow/{id}`, `/api/metadata/...`.
//!
//! Owns: serving those three files with their content types. Must not touch: any state (the routes need none).

use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

/// The page.
const INDEX_HTML: &str = include_str!("ui/index.html");
/// The page's script: hash routing and the four views.
const APP_JS: &str = include_str!("ui/app.js");
/// The page's style sheet.
const STYLE_CSS: &str = include_str!("ui/style.css");

/// The UI routes, merged into the node's router. Generic over the router's state because the files need none.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }))
        .route("/ui/app.js", get(|| async { asset("application/javascript; charset=utf-8", APP_JS) }))
        .route("/ui/style.css", get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }))
}

/// A file with its type. `no-cache`: the browser revalidates, so a node running a newer binary serves its own UI.
fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    ([(CONTENT_TYPE, content_type), (CACHE_CONTROL, "no-cache")], body)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves the routes on a loopback port and fetches each file.
    #[tokio::test]
    async fn page_script_and_styles_are_served_with_their_types() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binds loopback");
        let addr = listener.local_addr().expect("has an address");
        let server = tokio::spawn(async move { axum::serve(listener, routes::<()>()).await });
        let client = reqwest::Client::builder().no_proxy().build().expect("a plain client builds");
        let fetch = |path: &'static str| {
            let client = client.clone();
            async move {
                let resp = client.get(format!("http://{addr}{path}")).send().await.expect("the server answers");
                let status = resp.status().as_u16();
                let ct = resp.headers()[CONTENT_TYPE.as_str()].to_str().expect("ASCII header").to_string();
                (status, ct, resp.text().await.expect("a text body"))
            }
        };
        let (status, ct, html) = fetch("/").await;
        assert_eq!((status, ct.as_str()), (200, "text/html; charset=utf-8"));
        assert!(html.contains(r#"<script src="/ui/app.js" defer></script>"#), "{html}");
        assert!(html.contains(r#"href="/ui/style.css""#) && html.contains(r#"id="view""#), "{html}");
        let (status, ct, js) = fetch("/ui/app.js").await;
        assert_eq!((status, ct.as_str()), (200, "application/javascript; charset=utf-8"));
        assert!(js.contains("function esc("), "the script escapes what it inserts");
        let (status, ct, _) = fetch("/ui/style.css").await;
        assert_eq!((status, ct.as_str()), (200, "text/css; charset=utf-8"));
        // Nothing is loaded from elsewhere: the page must work without a network.
        for text in [&html, &js] {
            assert!(!text.contains("http://") && !text.contains("https://"), "external reference in the UI");
        }
        server.abort();
    }
}
