//! `canopy demo`: a small overlay on 127.0.0.1, searched end to end.
//!
//! Four supernodes in a line (S1 - S2 - S3 - S4), three leaves sharing
//! generated sample files (one of them firewalled), and a searcher at the
//! far end. It searches across supernodes, then downloads: one file from
//! two sources at once, one from the firewalled leaf by push. Every search
//! and download is checked against what was planted: the demo exits
//! non-zero if anything differs, so it doubles as a smoke test.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use canopy_core::download::DownloadConfig;
use canopy_core::leaf::SearchRequest;
use canopy_core::save_name::safe_file_name;
use canopy_core::search::{SearchResult, most_agreed};
use canopy_node::get::{self, GetOptions};
use canopy_node::leaf::{self, LeafHandle, LeafOptions};
use canopy_node::supernode::{self, SupernodeHandle, SupernodeOptions};
use canopy_proto::{ContentId, NodeId};
use canopy_transfer::client::DirectConnector;
use canopy_transfer::download::{self, DownloadOptions, DownloadReport, DownloadSource};
use canopy_transfer::path::TransferPath;
use indicatif::HumanBytes;
use serde::Serialize;

use crate::output::{self, JsonResult};

/// Arguments of `canopy demo`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Print one JSON object per search instead of text.
    #[arg(long)]
    json: bool,
}

const SUPERNODES: usize = 4;
const PATIENCE: Duration = Duration::from_secs(15);

/// A demo leaf: its name, its supernode (index into the line), and its
/// files as (name, length).
struct SampleLeaf {
    name: &'static str,
    at: usize,
    /// Accepts no connections: reached by push.
    firewalled: bool,
    files: &'static [(&'static str, usize)],
}

const LEAVES: &[SampleLeaf] = &[
    SampleLeaf {
        name: "alice",
        at: 0,
        firewalled: false,
        files: &[
            ("Aurora Borealis - Night Sky.flac", 1_500_000),
            ("Field Recording - Rain on Leaves.wav", 700_000),
            ("Canopy Field Guide.pdf", 8_000_000),
        ],
    },
    SampleLeaf {
        name: "bob",
        at: 1,
        firewalled: true,
        files: &[
            ("Moonlight Sonata (Live).mp3", 900_000),
            ("Mountain Trail Map.png", 120_000),
        ],
    },
    SampleLeaf {
        name: "carol",
        at: 3,
        firewalled: false,
        files: &[
            // The same bytes as alice's copy: one result, two sources.
            ("Canopy Field Guide.pdf", 8_000_000),
            ("Rain Forest Ambience.ogg", 450_000),
        ],
    },
];

/// Deterministic sample content: the same name always gives the same bytes.
fn sample_bytes(name: &str, len: usize) -> Vec<u8> {
    let mut state = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let mut bytes = Vec::with_capacity(len);
    while bytes.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

struct Planted {
    leaves: Vec<(String, usize, LeafHandle)>,
    ids: HashMap<String, ContentId>,
}

async fn start_supernodes() -> anyhow::Result<Vec<SupernodeHandle>> {
    let mut nodes: Vec<SupernodeHandle> = Vec::new();
    for _ in 0..SUPERNODES {
        let mut options = SupernodeOptions::new(SocketAddr::from(([127, 0, 0, 1], 0)));
        options.peers = nodes
            .last()
            .map(SupernodeHandle::local_addr)
            .into_iter()
            .collect();
        // A strict line, so the TTL boundary shows: no extra peers.
        options.peers_wanted = 0;
        nodes.push(supernode::start(options).await?);
    }
    for (i, node) in nodes.iter().enumerate() {
        let neighbours = usize::from(i > 0) + usize::from(i + 1 < SUPERNODES);
        node.wait_for(PATIENCE, |s| s.supernode_peers == neighbours)
            .await
            .map_err(|_| anyhow::anyhow!("supernode S{} did not join the overlay", i + 1))?;
    }
    Ok(nodes)
}

async fn start_leaves(nodes: &[SupernodeHandle], root: &Path) -> anyhow::Result<Planted> {
    let mut leaves = Vec::new();
    for SampleLeaf {
        name,
        at,
        firewalled,
        files,
    } in LEAVES
    {
        let folder = root.join(name);
        std::fs::create_dir_all(&folder)?;
        for (file, len) in *files {
            std::fs::write(folder.join(file), sample_bytes(file, *len))?;
        }
        let mut options = LeafOptions::new(nodes[*at].local_addr());
        options.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        options.firewalled = *firewalled;
        options.shares = vec![folder];
        options.data_dir = Some(root.join(format!("{name}-data")));
        let handle = leaf::start(options).await?;
        handle
            .wait_connected(PATIENCE)
            .await
            .with_context(|| format!("leaf {name} could not join"))?;
        leaves.push(((*name).to_owned(), *at, handle));
    }
    for (i, node) in nodes.iter().enumerate() {
        let expected: usize = LEAVES
            .iter()
            .filter(|l| l.at == i)
            .map(|l| l.files.len())
            .sum();
        node.wait_for(PATIENCE, |s| s.index_files == expected)
            .await
            .map_err(|_| anyhow::anyhow!("S{} did not index its leaves' files", i + 1))?;
    }
    let ids = LEAVES
        .iter()
        .flat_map(|leaf| leaf.files.iter())
        .map(|(file, len)| {
            let hash = blake3::hash(&sample_bytes(file, *len));
            ((*file).to_owned(), ContentId(*hash.as_bytes()))
        })
        .collect();
    Ok(Planted { leaves, ids })
}

struct Search {
    label: String,
    request: SearchRequest,
    /// (file name, names of the leaves that must be its sources)
    expect: Vec<(&'static str, Vec<&'static str>)>,
    why: &'static str,
}

fn keywords(words: &str, ttl: u8, timeout: Duration) -> SearchRequest {
    let words: Vec<&str> = words.split_whitespace().collect();
    SearchRequest::keywords(&words, ttl, timeout, 100)
}

fn searches(planted: &Planted) -> anyhow::Result<Vec<Search>> {
    let quick = Duration::from_millis(800);
    let sonata = *planted
        .ids
        .get("Moonlight Sonata (Live).mp3")
        .context("sample file missing")?;
    let mut by_id = keywords("", 4, quick);
    by_id.content_id = Some(sonata);
    Ok(vec![
        Search {
            label: "\"aurora borealis\" (ttl 4)".into(),
            request: keywords("aurora borealis", 4, quick),
            expect: vec![("Aurora Borealis - Night Sky.flac", vec!["alice"])],
            why: "alice is on S1: the query crossed S4, S3, S2 to reach her supernode",
        },
        Search {
            label: "\"canopy guide\" (ttl 4)".into(),
            request: keywords("canopy guide", 4, quick),
            expect: vec![("Canopy Field Guide.pdf", vec!["alice", "carol"])],
            why: "the same bytes shared by two leaves: one result, two sources",
        },
        Search {
            label: "\"rain\" (ttl 4)".into(),
            request: keywords("rain", 4, quick),
            expect: vec![
                ("Field Recording - Rain on Leaves.wav", vec!["alice"]),
                ("Rain Forest Ambience.ogg", vec!["carol"]),
            ],
            why: "every keyword is a word of the name, wherever it stands",
        },
        Search {
            label: format!("content id {}", sonata.to_hex()),
            request: by_id,
            expect: vec![("Moonlight Sonata (Live).mp3", vec!["bob"])],
            why: "a search by BLAKE3 content id, the value b3sum prints",
        },
        Search {
            label: "\"aurora borealis\" (ttl 2)".into(),
            request: keywords("aurora borealis", 2, quick),
            expect: vec![],
            why: "TTL 2 reaches S4 and S3 only; alice's supernode is out of range",
        },
    ])
}

/// A download the demo makes from the searcher's supernode.
struct Download {
    file: &'static str,
    /// How many sources must contribute.
    sources: usize,
    why: &'static str,
}

const DOWNLOADS: &[Download] = &[
    Download {
        file: "Canopy Field Guide.pdf",
        sources: 2,
        why: "from alice and carol at once, every MiB checked against the content id",
    },
    Download {
        file: "Moonlight Sonata (Live).mp3",
        sources: 1,
        why: "bob accepts no connections: asked by push through S4, S3, S2, he connected out",
    },
];

#[derive(Serialize)]
struct JsonDownload<'a> {
    download: &'a str,
    id: String,
    sources_used: usize,
    bytes_per_source: BTreeMap<String, u64>,
    /// Per source, the ways its connections were made: "direct", "push",
    /// "hole punch", "relay".
    paths_per_source: BTreeMap<String, Vec<TransferPath>>,
    seconds: f64,
    ok: bool,
}

/// Downloads `id` from every source a search by id finds, all of them
/// from the start. (`canopy get` starts on the first source that answers,
/// and these small files are done before a far source's hit is back.)
async fn from_every_source(
    searcher: &LeafHandle,
    id: ContentId,
    into: &Path,
) -> anyhow::Result<DownloadReport> {
    let found = searcher
        .search(SearchRequest::content(id, 7, Duration::from_millis(800)))
        .await?;
    let result = most_agreed(&found.results, id).context("no source found")?;
    let sources = result
        .sources
        .iter()
        .map(|source| DownloadSource {
            label: source.addr.to_string(),
            connector: Arc::new(DirectConnector::new(source.addr, PATIENCE)),
            partial: false,
            addr: Some(source.addr),
        })
        .collect();
    let options = DownloadOptions {
        content_id: id,
        size: result.size,
        target: into.join(safe_file_name(&result.name, &id)),
        force: false,
        // One 1 MiB group per request and one request per source at a
        // time, so the groups spread over every source before the endgame
        // (where an idle source races a busy one for the last groups) can
        // begin: each source delivers some whatever the machine's load.
        config: DownloadConfig {
            groups_per_request: 1,
            requests_per_source: 1,
            ..DownloadConfig::default()
        },
        progress: None,
    };
    Ok(download::download(sources, options).await?)
}

/// Downloads one planted file and checks it against its content id.
async fn run_download(
    download: &Download,
    planted: &Planted,
    searcher: &LeafHandle,
    at: &SupernodeHandle,
    into: &Path,
    json: bool,
) -> anyhow::Result<()> {
    let id = *planted
        .ids
        .get(download.file)
        .context("sample file missing")?;
    let report = if download.sources > 1 {
        from_every_source(searcher, id, into).await?
    } else {
        let mut options = GetOptions::new(at.local_addr(), id);
        options.output = Some(into.to_owned());
        options.search_timeout = Duration::from_millis(800);
        get::get(options).await?
    };
    let bytes = std::fs::read(&report.path)?;
    let verified = *blake3::hash(&bytes).as_bytes() == id.0;
    let used: Vec<_> = report.sources.iter().filter(|s| s.bytes > 0).collect();
    let ok = verified && used.len() == download.sources;
    if json {
        let line = JsonDownload {
            download: download.file,
            id: id.to_hex(),
            sources_used: report.sources_used(),
            bytes_per_source: report.bytes_per_source(),
            paths_per_source: report.paths_per_source(),
            seconds: report.elapsed.as_secs_f64(),
            ok,
        };
        say!("{}", serde_json::to_string(&line)?);
    } else {
        say!(
            "download {} ({}) from S{}:",
            download.file,
            HumanBytes(report.size),
            SUPERNODES
        );
        for source in &used {
            say!(
                "  {:>10} from {}",
                HumanBytes(source.bytes).to_string(),
                source.source
            );
        }
        let check = if verified {
            "its BLAKE3 equals the content id"
        } else {
            "CORRUPT"
        };
        say!("  saved, and {check}");
        let mark = if ok { "ok" } else { "UNEXPECTED" };
        say!("  {mark}: {}\n", download.why);
    }
    ensure!(verified, "the file does not match its content id");
    ensure!(
        used.len() == download.sources,
        "{} sources contributed, expected {}",
        used.len(),
        download.sources
    );
    Ok(())
}

#[derive(Serialize)]
struct JsonSearch<'a> {
    search: &'a str,
    ttl: u8,
    millis: u128,
    ok: bool,
    results: Vec<JsonResult>,
}

fn check(
    search: &Search,
    results: &[SearchResult],
    who: &HashMap<NodeId, String>,
) -> anyhow::Result<()> {
    let found: BTreeSet<(String, BTreeSet<String>)> = results
        .iter()
        .map(|r| {
            let sources = r
                .sources
                .iter()
                .map(|s| {
                    who.get(&s.node_id)
                        .cloned()
                        .unwrap_or_else(|| s.addr.to_string())
                })
                .collect();
            (r.name.clone(), sources)
        })
        .collect();
    let expected: BTreeSet<(String, BTreeSet<String>)> = search
        .expect
        .iter()
        .map(|(name, sources)| {
            (
                (*name).to_owned(),
                sources.iter().map(|s| (*s).to_owned()).collect(),
            )
        })
        .collect();
    ensure!(
        found == expected,
        "search {} found {found:?}, expected {expected:?}",
        search.label
    );
    Ok(())
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let root = tempfile::tempdir().context("creating a scratch folder")?;
    let nodes = start_supernodes().await?;
    let planted = start_leaves(&nodes, root.path()).await?;
    let searcher_at = SUPERNODES - 1;
    let mut searcher_options = LeafOptions::new(nodes[searcher_at].local_addr());
    searcher_options.listen = None;
    let searcher = leaf::start(searcher_options).await?;
    searcher.wait_connected(PATIENCE).await?;

    let who: HashMap<NodeId, String> = planted
        .leaves
        .iter()
        .map(|(name, _, handle)| (handle.node_id(), name.clone()))
        .collect();
    if !args.json {
        say!(
            "Canopy demo: {SUPERNODES} supernodes in a line on 127.0.0.1, {} leaves sharing sample files.\n",
            LEAVES.len()
        );
        let line: Vec<String> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| format!("S{} {}", i + 1, n.local_addr()))
            .collect();
        say!("  overlay   {}", line.join("  ──  "));
        for (name, at, handle) in &planted.leaves {
            let addr = handle
                .listen_addr()
                .map_or_else(|| "firewalled".to_owned(), |a| a.to_string());
            say!(
                "  leaf      {name:<6} on S{}  {addr:<21} sharing {} files",
                at + 1,
                handle.status().shared_files
            );
        }
        say!("  searcher  on S{}\n", searcher_at + 1);
    }

    let mut failures = Vec::new();
    for search in searches(&planted)? {
        let started = Instant::now();
        let outcome = searcher.search(search.request.clone()).await?;
        let elapsed = started.elapsed();
        let verdict = check(&search, &outcome.results, &who);
        if args.json {
            let line = JsonSearch {
                search: &search.label,
                ttl: search.request.ttl,
                millis: elapsed.as_millis(),
                ok: verdict.is_ok(),
                results: outcome.results.iter().map(JsonResult::from).collect(),
            };
            say!("{}", serde_json::to_string(&line)?);
        } else {
            say!("search {} from S{}:", search.label, searcher_at + 1);
            if outcome.results.is_empty() {
                say!("  nothing found");
            } else {
                for row in output::table(&outcome.results).lines() {
                    say!("  {row}");
                }
                for result in &outcome.results {
                    for source in &result.sources {
                        let name = who.get(&source.node_id).map_or("?", String::as_str);
                        let at = planted
                            .leaves
                            .iter()
                            .find(|l| l.0 == name)
                            .map_or(0, |l| l.1 + 1);
                        let reach = if source.firewalled {
                            format!("firewalled, seen from {}", source.addr)
                        } else {
                            format!("at {}", source.addr)
                        };
                        say!("  {} is {reach} ({name}, a leaf of S{at})", result.name);
                    }
                }
            }
            let mark = if verdict.is_ok() { "ok" } else { "UNEXPECTED" };
            say!("  {mark}: {}\n", search.why);
        }
        if let Err(error) = verdict {
            failures.push(error.to_string());
        }
    }

    let downloads = root.path().join("downloads");
    std::fs::create_dir_all(&downloads)?;
    for download in DOWNLOADS {
        let verdict = run_download(
            download,
            &planted,
            &searcher,
            &nodes[searcher_at],
            &downloads,
            args.json,
        )
        .await;
        if let Err(error) = verdict {
            failures.push(format!("download of {}: {error:#}", download.file));
        }
    }

    searcher.shutdown().await;
    for (_, _, handle) in planted.leaves {
        handle.shutdown().await;
    }
    for node in nodes {
        node.shutdown().await;
    }
    if !failures.is_empty() {
        bail!(
            "the demo did not find or fetch what it planted:\n{}",
            failures.join("\n")
        );
    }
    if !args.json {
        say!("demo ok: every search found exactly what was planted, and every download verified.");
    }
    Ok(())
}
