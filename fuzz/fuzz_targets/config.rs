//! The `--config` files of `canopy supernode` and `canopy leaf`: TOML text
//! parsed by `canopy_cli::config::parse` into each command's settings
//! (every key through its flag's own value parser).
//!
//! The file is read as UTF-8 text (anything else is refused before
//! parsing), so only text is tried. Parsing must never panic, and every
//! error must name the file, as the command's error line does.
#![no_main]

use std::path::Path;

use canopy_cli::config::{ConfigError, parse};
use canopy_cli::settings::{leaf::LeafArgs, supernode::SupernodeArgs};
use libfuzzer_sys::fuzz_target;

fn check_error(error: &ConfigError) {
    let line = error.to_string();
    assert!(line.starts_with("config fuzz.toml"), "{line}");
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Some(Path::new("fuzz.toml"));
    if let Err(error) = parse::<SupernodeArgs>(text, path) {
        check_error(&error);
    }
    if let Err(error) = parse::<LeafArgs>(text, path) {
        check_error(&error);
    }
});
