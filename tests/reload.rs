//! Config reload: a changed file (as Kubernetes swaps ConfigMaps) applies new routes; an invalid one keeps the running config.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::time::Duration;

use sidecache::config::Config;
use support::{Origin, Proxy, eventually, routes};

fn config_text(origin: &Origin, routes: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[origin]\nurl = \"http://{}\"\n{routes}",
        origin.addr
    )
}

/// Replaces the file the way Kubernetes updates a mounted ConfigMap: write
/// elsewhere, then rename over it.
fn replace(path: &Path, text: &str) {
    let staging = path.with_extension("new");
    std::fs::write(&staging, text).unwrap();
    std::fs::rename(&staging, path).unwrap();
}

#[tokio::test]
async fn a_changed_file_applies_new_routes_and_an_invalid_one_changes_nothing() {
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, config_text(&origin, "")).unwrap();
    let running = sidecache::start(Config::load(&path).unwrap())
        .await
        .unwrap();
    let reloader = running.reloader(path.clone());
    let watching = reloader.clone().spawn(None);
    let proxy = Proxy::around(running);
    assert_eq!(
        proxy.get("/page").await.cache_status(),
        "sidecache; fwd=bypass"
    );

    replace(&path, &config_text(&origin, &routes::cache("/page", "60s")));
    let mut status = String::new();
    eventually("the reload to apply", Duration::from_secs(5), async || {
        status = proxy.get("/page").await.cache_status().to_owned();
        status != "sidecache; fwd=bypass"
    })
    .await;
    assert_eq!(
        status, "sidecache; fwd=miss; stored",
        "the new route applies without a restart"
    );
    assert!(proxy.get("/page").await.cache_status().contains("hit"));

    // An invalid file is refused and the running routes stay.
    replace(&path, "[[routes]]\npath = \"/page\"\ntll = \"1s\"\n");
    assert!(reloader.reload().is_err());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(proxy.get("/page").await.cache_status().contains("hit"));
    watching.abort();
}
