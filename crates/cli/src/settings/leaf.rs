//! `canopy leaf`'s settings: each flag, file key, default and range once,
//! and the one conversion into what the daemon is started with
//! ([`LeafSettings`]). The live settings (rates, slots, downloads at once)
//! are the control API's [`SettingsPatch`], flattened in: the same names
//! as flags, file keys and API fields.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::Duration;

use canopy_core::addr_limits::AddressLimit;
use canopy_daemon::model::{Settings, SettingsPatch};
use canopy_node::addr::{self, HostPort};
use canopy_node::hosts::HostCache;
use canopy_node::leaf::LeafOptions;
use canopy_transfer::server::ServerConfig;
use clap::{Args as _, FromArgMatches as _};

use crate::config::{self, ConfigError, Exempt, Origin, at_least_one, seconds};

/// The file server's defaults, which the flags' defaults show.
static SERVER: LazyLock<ServerConfig> = LazyLock::new(ServerConfig::default);

/// Settings of `canopy leaf`. Each has a key of the same name in the
/// `--config` file; flags win over the file.
#[derive(Debug, Clone, clap::Args)]
pub struct LeafArgs {
    /// A TOML file with any of the settings below; SIGHUP re-reads it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// A supernode to join, `host[:port]` (port 6346 if left out;
    /// repeatable; `supernodes` in the file). More are learned from
    /// supernodes and kept in the host cache, so after a first run none
    /// need be given.
    #[arg(long = "supernode", value_name = "HOST[:PORT]")]
    pub supernodes: Vec<HostPort>,
    /// A DNS name listing supernodes (every address it has), asked at
    /// start and when no supernode answers (repeatable; `bootstrap` in the
    /// file).
    #[arg(long, value_name = "NAME[:PORT]")]
    pub bootstrap: Vec<HostPort>,
    /// How many supernodes to stay connected to and publish to.
    #[arg(long, default_value_t = 2, value_parser = at_least_one::<usize>)]
    pub supernodes_wanted: usize,
    /// A folder to share (repeatable; `shares` in the file; none makes a
    /// download-only leaf). Shared folders are only ever read; SIGHUP
    /// re-reads the list from the file.
    #[arg(long = "share", value_name = "DIR")]
    pub shares: Vec<PathBuf>,
    /// Where this leaf serves its files over HTTP.
    #[arg(long, default_value_t = canopy_transfer::listen::any_dual_stack(0))]
    pub listen: SocketAddr,
    /// Announce this address instead of the listening one (a port forward).
    #[arg(long)]
    pub advertise: Option<SocketAddr>,
    /// Accept no connections: serve downloaders only by push.
    #[arg(long)]
    pub firewalled: bool,
    /// Don't ask the home router (NAT-PMP, UPnP) to forward the listen port
    /// (`port_mapping = false` in the file). With it on, the mapped address
    /// is the one announced, the mapping is renewed, and removed on exit.
    #[arg(long = "no-port-mapping", action = clap::ArgAction::SetFalse)]
    pub port_mapping: bool,
    /// Where the control API and the web UI listen.
    #[arg(long, default_value_t = SocketAddr::from(([127, 0, 0, 1], 6349)))]
    pub control: SocketAddr,
    /// Where downloads are saved [default: the download folder's canopy/,
    /// else downloads/ in the data directory].
    #[arg(long, value_name = "DIR")]
    pub downloads: Option<PathBuf>,
    /// Don't share what is downloaded (`share_downloads = false` in the file).
    #[arg(long = "no-share-downloads", action = clap::ArgAction::SetFalse)]
    pub share_downloads: bool,
    /// The settings that change live (also through the control API).
    #[command(flatten)]
    pub live: SettingsPatch,
    /// Automatic supernode election.
    #[command(flatten)]
    pub election: Box<super::election::ElectionArgs>,
    /// Upload slots one IP address may hold (one /24 or /48 network as
    /// much).
    #[arg(long, default_value_t = SERVER.uploads_per_address.per_ip,
        value_parser = at_least_one::<usize>)]
    pub uploads_per_ip: usize,
    /// HTTP connections one IP address may hold (a /24 or /48 network four
    /// times as many); more are closed at once.
    #[arg(long, default_value_t = SERVER.connections_per_address.per_ip,
        value_parser = at_least_one::<usize>)]
    pub http_connections_per_ip: usize,
    /// HTTP connections held at once from everyone.
    #[arg(long, default_value_t = SERVER.max_connections, value_parser = at_least_one::<usize>)]
    pub max_http_connections: usize,
    /// Seconds a connection has to send a complete request head, on
    /// arrival and between keep-alive requests.
    #[arg(long, default_value_t = SERVER.header_timeout.as_secs(), value_parser = seconds)]
    pub http_header_timeout: u64,
    /// Seconds an upload may make no progress (the downloader not reading)
    /// before it is cut and its slot freed.
    #[arg(long, default_value_t = SERVER.write_timeout.as_secs(), value_parser = seconds)]
    pub upload_stall_timeout: u64,
    /// Slowest upload kept, in bytes a second over 30 s.
    #[arg(long, default_value_t = SERVER.min_upload_rate)]
    pub min_upload_rate: u64,
    /// Don't ration whole files among a crowd of downloaders
    /// (`super_seed = false` in the file). On, while several sharing
    /// downloaders fetch a file at once, each group leaves this leaf once
    /// before any leaves twice and they spread the copies among
    /// themselves.
    #[arg(long = "no-super-seed", action = clap::ArgAction::SetFalse)]
    pub super_seed: bool,
    /// Don't find supernodes and leaves on the LAN by multicast
    /// (`lan_discovery = false` in the file). On, the leaf announces
    /// itself on the LAN and joins the supernodes it hears there, with no
    /// `--supernode` needed.
    #[arg(long = "no-lan-discovery", action = clap::ArgAction::SetFalse)]
    pub lan_discovery: bool,
    /// Networks not limited per address (repeatable; `limit_exempt` in the
    /// file); `none` (or `[]` in the file) limits everyone.
    #[arg(long = "limit-exempt", value_name = "CIDR",
        default_values_t = SERVER.exempt.iter().copied().map(Exempt::from))]
    pub limit_exempt: Vec<Exempt>,
    /// Where the node key, the hash cache, the host cache and the queue
    /// are kept [default: $XDG_DATA_HOME/canopy].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Seconds between rescans of the shared folders.
    #[arg(long, default_value_t = 60, value_parser = seconds)]
    pub rescan: u64,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long)]
    pub metrics: Option<SocketAddr>,
    /// Print machine-readable JSON lines instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The keys a running leaf applies on SIGHUP; the others need a restart.
pub const LIVE_KEYS: &[&str] = &[
    "upload_rate_limit",
    "download_rate_limit",
    "upload_slots",
    "max_active_downloads",
    "shares",
];

/// A leaf's settings resolved: what the daemon is started with
/// (`canopy_daemon::DaemonOptions` takes `leaf`, `control`,
/// `downloads_dir`, `share_downloads` and `settings` as they are, once
/// [`LeafSettings::resolve_supernodes`] has looked the names up).
#[derive(Debug)]
pub struct LeafSettings {
    /// The overlay node's options (its `supernodes` filled in by
    /// [`LeafSettings::resolve_supernodes`]).
    pub leaf: LeafOptions,
    /// The supernodes given, as written.
    pub supernodes: Vec<HostPort>,
    /// Where the control API listens.
    pub control: SocketAddr,
    /// Where downloads are saved.
    pub downloads_dir: PathBuf,
    /// Whether finished downloads are shared.
    pub share_downloads: bool,
    /// The live settings at start.
    pub settings: Settings,
    /// Where Prometheus metrics are served, if anywhere.
    pub metrics: Option<SocketAddr>,
    /// JSON lines on stdout.
    pub json: bool,
    /// The supernode election, unless off.
    pub election: Option<canopy_node::election::ElectionOptions>,
}

impl LeafSettings {
    /// Looks up the supernodes given by name (an address given as an IP
    /// needs none): every address of each; a name that does not resolve
    /// is logged and passed over.
    pub async fn resolve_supernodes(&mut self) {
        self.leaf.supernodes = addr::resolve_all(&self.supernodes).await;
    }
}

/// What a SIGHUP can change in a running leaf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveConfig {
    /// Rates, slots, downloads at once.
    pub settings: Settings,
    /// The folders to share.
    pub shares: Vec<PathBuf>,
}

/// What changed between two [`LiveConfig`]s, as the daemon applies it:
/// a settings patch, folders to add and folders to remove.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveChanges {
    /// The settings that changed (others `None`).
    pub patch: SettingsPatch,
    /// Folders to start sharing.
    pub added: Vec<PathBuf>,
    /// Folders to stop sharing.
    pub removed: Vec<PathBuf>,
}

impl LiveChanges {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl LiveConfig {
    /// What to apply to go from `self` to `new`.
    pub fn changes(&self, new: &LiveConfig) -> LiveChanges {
        let (old_settings, new_settings) = (&self.settings, &new.settings);
        let changed = |old: u64, new: u64| (old != new).then_some(new);
        let changed_count = |old: usize, new: usize| (old != new).then_some(new);
        LiveChanges {
            patch: SettingsPatch {
                upload_rate_limit: changed(
                    old_settings.upload_rate_limit,
                    new_settings.upload_rate_limit,
                ),
                download_rate_limit: changed(
                    old_settings.download_rate_limit,
                    new_settings.download_rate_limit,
                ),
                upload_slots: changed_count(old_settings.upload_slots, new_settings.upload_slots),
                max_active_downloads: changed_count(
                    old_settings.max_active_downloads,
                    new_settings.max_active_downloads,
                ),
            },
            added: new
                .shares
                .iter()
                .filter(|dir| !self.shares.contains(dir))
                .cloned()
                .collect(),
            removed: self
                .shares
                .iter()
                .filter(|dir| !new.shares.contains(dir))
                .cloned()
                .collect(),
        }
    }
}

impl LeafArgs {
    /// The daemon's settings: the one place a setting meets the node's
    /// field. Checks what one setting says about another; does not look
    /// at the disk (see [`LeafArgs::check_somewhere_to_go`]).
    pub fn settings(&self, origin: Origin<'_>) -> Result<LeafSettings, ConfigError> {
        if self.firewalled && self.advertise.is_some() {
            return Err(origin.invalid("advertise", "a firewalled leaf announces no address"));
        }
        let settings = self.live_settings();
        let exempt = config::exempt_networks(&self.limit_exempt)
            .map_err(|problem| origin.invalid("limit_exempt", problem))?;
        let server = ServerConfig {
            upload_slots: settings.upload_slots,
            max_connections: self.max_http_connections,
            connections_per_address: AddressLimit::new(
                self.http_connections_per_ip,
                self.http_connections_per_ip.saturating_mul(4),
            ),
            uploads_per_address: AddressLimit::new(self.uploads_per_ip, self.uploads_per_ip),
            exempt,
            header_timeout: Duration::from_secs(self.http_header_timeout),
            write_timeout: Duration::from_secs(self.upload_stall_timeout),
            min_upload_rate: self.min_upload_rate,
            rate_window: SERVER.rate_window,
            super_seed: self.super_seed,
        };
        let data_dir = self.data_dir.clone().or_else(config::default_data_dir);
        // A placeholder first supernode: the list is the given names'
        // addresses (`resolve_supernodes`), and may be empty (the host
        // cache's and the bootstrap names' then).
        let mut leaf = LeafOptions::new(SocketAddr::from(([127, 0, 0, 1], 0)));
        leaf.supernodes = self
            .supernodes
            .iter()
            .filter_map(HostPort::socket_addr)
            .collect();
        leaf.bootstrap.clone_from(&self.bootstrap);
        leaf.supernodes_wanted = self.supernodes_wanted;
        leaf.listen = Some(self.listen);
        leaf.advertise = self.advertise;
        leaf.firewalled = self.firewalled;
        if !self.port_mapping {
            leaf.port_mapping = None;
        }
        leaf.server = server;
        leaf.shares.clone_from(&self.shares);
        leaf.reconnect = true;
        leaf.rescan_interval = Some(Duration::from_secs(self.rescan));
        leaf.lan_discovery = self.lan_discovery;
        let downloads_dir = self.downloads.clone().unwrap_or_else(|| {
            dirs::download_dir()
                .map(|dir| dir.join("canopy"))
                .or_else(|| data_dir.as_ref().map(|dir| dir.join("downloads")))
                .unwrap_or_else(|| PathBuf::from("downloads"))
        });
        // Shown, logged and given to the API as absolute paths.
        let downloads_dir = std::path::absolute(&downloads_dir).unwrap_or(downloads_dir);
        let election = self.election.options(data_dir.as_deref());
        leaf.data_dir = data_dir;
        Ok(LeafSettings {
            leaf,
            supernodes: self.supernodes.clone(),
            control: self.control,
            downloads_dir,
            share_downloads: self.share_downloads,
            settings,
            metrics: self.metrics,
            json: self.json,
            election,
        })
    }

    /// The live settings: the flags' (or the file's) values over the
    /// defaults the `SettingsPatch` flags declare.
    pub fn live_settings(&self) -> Settings {
        let defaults = live_defaults();
        Settings {
            upload_rate_limit: self
                .live
                .upload_rate_limit
                .unwrap_or(defaults.upload_rate_limit),
            download_rate_limit: self
                .live
                .download_rate_limit
                .unwrap_or(defaults.download_rate_limit),
            upload_slots: self.live.upload_slots.unwrap_or(defaults.upload_slots),
            max_active_downloads: self
                .live
                .max_active_downloads
                .unwrap_or(defaults.max_active_downloads),
        }
    }

    /// What a SIGHUP may change.
    pub fn live(&self) -> LiveConfig {
        LiveConfig {
            settings: self.live_settings(),
            shares: self.shares.clone(),
        }
    }

    /// A leaf needs somewhere to start: a supernode, a bootstrap name, LAN
    /// discovery, or supernodes remembered in the host cache of
    /// `settings`' data directory.
    pub fn check_somewhere_to_go(
        &self,
        settings: &LeafSettings,
        origin: Origin<'_>,
    ) -> Result<(), ConfigError> {
        if !self.supernodes.is_empty() || !self.bootstrap.is_empty() || self.lan_discovery {
            return Ok(());
        }
        let data_dir = settings.leaf.data_dir.as_deref();
        if let Some(dir) = data_dir
            && HostCache::load(Some(dir), &[]).addresses().next().is_some()
        {
            return Ok(());
        }
        let cache = match data_dir {
            Some(dir) => format!("the host cache in {} is empty", dir.display()),
            None => "there is no data directory to keep a host cache in".to_owned(),
        };
        Err(origin.invalid(
            "supernodes",
            format!(
                "no supernode to join: pass --supernode ADDR (`supernodes` in the file) or --bootstrap NAME, or leave LAN discovery on; {cache}"
            ),
        ))
    }
}

/// The live settings' defaults, as the `SettingsPatch` flags declare them.
pub fn live_defaults() -> Settings {
    let command = SettingsPatch::augment_args(clap::Command::new("canopy"));
    let patch = command
        .try_get_matches_from(["canopy"])
        .ok()
        .and_then(|matches| SettingsPatch::from_arg_matches(&matches).ok())
        .unwrap_or_default();
    Settings {
        upload_rate_limit: patch.upload_rate_limit.unwrap_or(0),
        download_rate_limit: patch.download_rate_limit.unwrap_or(0),
        upload_slots: patch.upload_slots.unwrap_or(1),
        max_active_downloads: patch.max_active_downloads.unwrap_or(1),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::parse;
    use canopy_transfer::server::DEFAULT_UPLOAD_SLOTS;

    fn settings(text: &str) -> Result<LeafSettings, String> {
        let path = Path::new("leaf.toml");
        let args = parse::<LeafArgs>(text, Some(path)).map_err(|e| e.to_string())?;
        let origin = Origin {
            file: Some(path),
            given: &[],
        };
        args.settings(origin).map_err(|e| e.to_string())
    }

    #[test]
    fn the_live_defaults_are_the_servers_and_the_apis() {
        let live = live_defaults();
        assert_eq!(live.upload_slots, DEFAULT_UPLOAD_SLOTS);
        assert_eq!(live.max_active_downloads, 3);
        assert_eq!((live.upload_rate_limit, live.download_rate_limit), (0, 0));
        let leaf = settings("").unwrap();
        assert_eq!(leaf.settings, live);
        assert_eq!(leaf.leaf.server.upload_slots, DEFAULT_UPLOAD_SLOTS);
        assert!(leaf.leaf.server.super_seed);
        let off = settings("super_seed = false\n").unwrap();
        assert!(!off.leaf.server.super_seed);
        assert_eq!(leaf.leaf.server.exempt, SERVER.exempt);
        assert_eq!(leaf.control, SocketAddr::from(([127, 0, 0, 1], 6349)));
        assert!(leaf.share_downloads);
        assert!(
            leaf.leaf.port_mapping.is_some(),
            "port mapping is on by default"
        );
        assert!(
            settings("port_mapping = false\n")
                .unwrap()
                .leaf
                .port_mapping
                .is_none()
        );
        assert!(leaf.leaf.shares.is_empty() && leaf.leaf.supernodes.is_empty());
        let election = leaf.election.expect("the election is on by default");
        assert_eq!(
            election.policy,
            canopy_core::election::ElectionConfig::default()
        );
        assert_eq!(election.supernode.protocol.max_leaves, 300);
        assert!(
            settings("auto_supernode = false\n")
                .unwrap()
                .election
                .is_none()
        );
        let quick = settings("election_min_uptime = 0\nelection_switch_spacing = 60\n")
            .unwrap()
            .election
            .unwrap();
        assert_eq!(quick.policy.min_uptime, Duration::ZERO);
        assert_eq!(quick.policy.switch_spacing, Duration::from_secs(60));
    }

    #[test]
    fn file_keys_are_the_api_fields_and_the_flags() {
        let leaf = settings(
            "upload_rate_limit = 1000\nmax_active_downloads = 7\nupload_slots = 9\nshare_downloads = false\ndownloads = \"/tmp/d\"\nbootstrap = [\"seed.example\"]\n",
        )
        .unwrap();
        assert_eq!(leaf.settings.upload_rate_limit, 1000);
        assert_eq!(leaf.settings.max_active_downloads, 7);
        assert_eq!(leaf.leaf.server.upload_slots, 9);
        assert!(!leaf.share_downloads);
        assert_eq!(leaf.downloads_dir, PathBuf::from("/tmp/d"));
        assert_eq!(leaf.leaf.bootstrap, vec!["seed.example".parse().unwrap()]);
        assert_eq!(leaf.leaf.bootstrap[0].port(), addr::DEFAULT_PORT);
        for (text, key) in [
            ("upload_slots = 0\n", "upload_slots"),
            ("max_active_downloads = 101\n", "max_active_downloads"),
            ("download_rate_limit = -1\n", "download_rate_limit"),
            ("uploads_per_ip = 0\n", "uploads_per_ip"),
            ("http_header_timeout = 0\n", "http_header_timeout"),
            (
                "firewalled = true\nadvertise = \"1.2.3.4:5\"\n",
                "advertise",
            ),
            ("control = \"here\"\n", "control"),
        ] {
            let error = settings(text).unwrap_err();
            assert!(
                error.starts_with(&format!("config leaf.toml: key `{key}`: ")),
                "{text}: {error}"
            );
        }
    }

    #[test]
    fn live_changes_are_a_patch_and_share_lists() {
        let before = parse::<LeafArgs>("shares = [\"/a\", \"/b\"]\n", None).unwrap();
        let after = parse::<LeafArgs>(
            "shares = [\"/b\", \"/c\"]\nupload_slots = 9\nupload_rate_limit = 0\n",
            None,
        )
        .unwrap();
        let changes = before.live().changes(&after.live());
        assert_eq!(
            changes,
            LiveChanges {
                patch: SettingsPatch {
                    upload_slots: Some(9),
                    ..SettingsPatch::default()
                },
                added: vec![PathBuf::from("/c")],
                removed: vec![PathBuf::from("/a")],
            }
        );
        assert!(after.live().changes(&after.live()).is_empty());
    }

    #[test]
    fn a_leaf_needs_somewhere_to_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = Path::new("leaf.toml");
        let text = format!(
            "data_dir = \"{}\"\nlan_discovery = false\n",
            dir.path().display()
        );
        let args = parse::<LeafArgs>(&text, Some(path)).unwrap();
        let origin = Origin {
            file: Some(path),
            given: &[],
        };
        let resolved = args.settings(origin).unwrap();
        let error = args
            .check_somewhere_to_go(&resolved, origin)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("--supernode") && error.contains("--bootstrap"),
            "{error}"
        );
        let args =
            parse::<LeafArgs>(&format!("{text}bootstrap = [\"seed.example\"]\n"), None).unwrap();
        assert!(args.check_somewhere_to_go(&resolved, origin).is_ok());
        // LAN discovery (on by default) is somewhere to go.
        let args = parse::<LeafArgs>("", None).unwrap();
        assert!(args.lan_discovery);
        let resolved = args.settings(origin).unwrap();
        assert!(resolved.leaf.lan_discovery);
        assert!(args.check_somewhere_to_go(&resolved, origin).is_ok());
    }
}
