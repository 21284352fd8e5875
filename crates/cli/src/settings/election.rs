//! The supernode election's settings, flattened into `canopy leaf`'s: each
//! flag is a key of the same name in the leaf's config file. Defaults are
//! the core's (`canopy_core::election::ElectionConfig`, after LimeWire's
//! ultrapeer criteria and gtk-gnutella's rules), shown by `--help`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::LazyLock;
use std::time::Duration;

use canopy_core::election::ElectionConfig;
use canopy_node::election::ElectionOptions;
use canopy_node::supernode::SupernodeOptions;

use crate::config::{at_least_one, seconds};

/// The policy's defaults, which the flags' defaults show.
static POLICY: LazyLock<ElectionConfig> = LazyLock::new(ElectionConfig::default);

/// Leaves a promoted supernode takes: gtk-gnutella's default maximum (the
/// memory rule budgets 256 KiB for each).
pub const DEFAULT_ELECTED_MAX_LEAVES: usize = 300;

/// When a leaf makes itself a supernode, and steps down again.
#[derive(Debug, Clone, clap::Args)]
pub struct ElectionArgs {
    /// Never become a supernode (`auto_supernode = false` in the file). On
    /// (the default), a leaf that others can connect to (its supernodes'
    /// connect-back says so), up long enough, fast enough and with memory
    /// to spare starts a supernode beside itself when leaves are being
    /// refused as full and the supernodes it knows have little room, and
    /// steps down when they have plenty and it has held few leaves for
    /// long, handing its leaves over.
    #[arg(long = "no-auto-supernode", action = clap::ArgAction::SetFalse)]
    pub auto_supernode: bool,
    /// Where the elected supernode listens (port 0: any free port).
    #[arg(long, default_value_t = canopy_transfer::listen::any_dual_stack(0))]
    pub supernode_listen: SocketAddr,
    /// Leaves the elected supernode takes.
    #[arg(long, default_value_t = DEFAULT_ELECTED_MAX_LEAVES,
        value_parser = at_least_one::<usize>)]
    pub supernode_max_leaves: usize,
    /// Seconds between two looks at the signals (jittered by a quarter
    /// either way).
    #[arg(long, default_value_t = POLICY.evaluate_every.as_secs(), value_parser = seconds)]
    pub election_interval: u64,
    /// Seconds up before promotion (LimeWire asks 1-2 h).
    #[arg(long, default_value_t = POLICY.min_uptime.as_secs())]
    pub election_min_uptime: u64,
    /// Upload rate seen, bytes a second, before promotion (LimeWire:
    /// 10 KB/s).
    #[arg(long, default_value_t = POLICY.min_upload_rate)]
    pub election_min_upload_rate: u64,
    /// Download rate seen, bytes a second, before promotion (LimeWire:
    /// 20 KB/s).
    #[arg(long, default_value_t = POLICY.min_download_rate)]
    pub election_min_download_rate: u64,
    /// Memory available, bytes, before promotion (gtk-gnutella's 256 KiB a
    /// leaf, for 300 leaves).
    #[arg(long, default_value_t = POLICY.min_memory)]
    pub election_min_memory: u64,
    /// Seconds between two switches of mode at least (gtk-gnutella: 30 min).
    #[arg(long, default_value_t = POLICY.switch_spacing.as_secs(), value_parser = seconds)]
    pub election_switch_spacing: u64,
    /// Free leaf slots, advertised by the supernodes known, at or below
    /// which a refusal as full means the network needs a supernode.
    #[arg(long, default_value_t = POLICY.scarce_free_slots)]
    pub election_scarce_free_slots: u64,
    /// A supernode holding this many leaves or fewer holds "few".
    #[arg(long, default_value_t = POLICY.few_leaves)]
    pub election_few_leaves: usize,
    /// Seconds holding few leaves before stepping down (gtk-gnutella: an
    /// ultrapeer without leaves for 1 h).
    #[arg(long, default_value_t = POLICY.idle_for.as_secs(), value_parser = seconds)]
    pub election_idle: u64,
    /// Free leaf slots the other supernodes must advertise before stepping
    /// down (and at least as many as our leaves).
    #[arg(long, default_value_t = POLICY.plenty_free_slots)]
    pub election_plenty_free_slots: u64,
}

impl ElectionArgs {
    /// The driver's options, or `None` with the election off. `data_dir`
    /// is the leaf's.
    pub fn options(&self, data_dir: Option<&Path>) -> Option<ElectionOptions> {
        if !self.auto_supernode {
            return None;
        }
        let policy = ElectionConfig {
            min_uptime: Duration::from_secs(self.election_min_uptime),
            min_upload_rate: self.election_min_upload_rate,
            min_download_rate: self.election_min_download_rate,
            min_memory: self.election_min_memory,
            switch_spacing: Duration::from_secs(self.election_switch_spacing),
            scarce_free_slots: self.election_scarce_free_slots,
            few_leaves: self.election_few_leaves,
            idle_for: Duration::from_secs(self.election_idle),
            plenty_free_slots: self.election_plenty_free_slots,
            evaluate_every: Duration::from_secs(self.election_interval),
            ..ElectionConfig::default()
        };
        let mut supernode = SupernodeOptions::new(self.supernode_listen);
        supernode.protocol.max_leaves = self.supernode_max_leaves;
        Some(ElectionOptions {
            policy,
            supernode,
            data_dir: data_dir.map(Path::to_owned),
        })
    }
}
