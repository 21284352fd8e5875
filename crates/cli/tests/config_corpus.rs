//! The config fuzz target's check on its committed corpus, and on every
//! prefix of each file (cut at each line): parsing never panics, and every
//! error names the file. `fuzz/run.sh` runs the real target; this runs in
//! `cargo test`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use canopy_cli::config::parse;
use canopy_cli::settings::leaf::LeafArgs;
use canopy_cli::settings::supernode::SupernodeArgs;

fn check(text: &str) -> usize {
    let path = Some(Path::new("fuzz.toml"));
    let mut errors = 0;
    for result in [
        parse::<SupernodeArgs>(text, path).map(drop),
        parse::<LeafArgs>(text, path).map(drop),
    ] {
        if let Err(error) = result {
            let line = error.to_string();
            assert!(line.starts_with("config fuzz.toml"), "{line}");
            errors += 1;
        }
    }
    errors
}

#[test]
fn the_config_corpus_parses_or_names_the_file() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/config");
    let mut files = 0;
    let mut errors = 0;
    for entry in std::fs::read_dir(&corpus).unwrap() {
        let Ok(text) = std::fs::read_to_string(entry.unwrap().path()) else {
            continue;
        };
        files += 1;
        errors += check(&text);
        let mut prefix = String::new();
        for line in text.split_inclusive('\n') {
            prefix.push_str(line);
            errors += check(&prefix);
        }
    }
    assert!(files >= 6, "the corpus is there: {files} files");
    assert!(errors > 0, "some of it is wrong on purpose");
}
