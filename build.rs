//! Detects nginx for the one integration test that uses it as a real upstream: without it the
//! test is reported as ignored (with the reason) instead of passing silently.

fn main() {
    println!("cargo:rustc-check-cfg=cfg(nginx_available)");
    let found = [
        "/usr/sbin/nginx",
        "/usr/bin/nginx",
        "/usr/local/sbin/nginx",
        "/usr/local/bin/nginx",
        "/sbin/nginx",
    ]
    .iter()
    .find(|p| std::path::Path::new(p).exists());
    // A missing tool is not watched: a path that does not exist makes cargo rerun this script,
    // and rebuild the crate, on every build. Installed one later? `touch build.rs` (or set
    // WARMGATE_REDETECT to anything new) and the next build looks again.
    if let Some(p) = found {
        println!("cargo:rustc-cfg=nginx_available");
        println!("cargo:rerun-if-changed={p}");
    }
    // The dashboard's browser test needs Chromium and its WebDriver.
    println!("cargo:rustc-check-cfg=cfg(chromium_available)");
    let chromium = ["/usr/bin/chromium", "/usr/bin/chromedriver"];
    if chromium.iter().all(|p| std::path::Path::new(p).exists()) {
        println!("cargo:rustc-cfg=chromium_available");
    }
    for p in chromium.iter().filter(|p| std::path::Path::new(p).exists()) {
        println!("cargo:rerun-if-changed={p}");
    }
    println!("cargo:rerun-if-env-changed=WARMGATE_REDETECT");
    println!("cargo:rerun-if-changed=build.rs");
}
