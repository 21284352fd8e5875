//! Rebuilds the crate when a file of the web UI (embedded from `web/`)
//! or the OpenAPI document changes, added files included.

fn main() {
    println!("cargo:rerun-if-changed=web");
    println!("cargo:rerun-if-changed=openapi.json");
}
