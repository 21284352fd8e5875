//! The download queue's policy: which downloads exist, where each stands,
//! and which start now. The daemon drives it (starting and stopping
//! fetches, saving it as `queue.json` after every change); the decisions
//! are all here, with the time passed in as Unix seconds (the queue
//! outlives the process, so its times are wall-clock ones).
//!
//! - One entry per content id: adding an id already queued returns that
//!   entry, so the same content is never downloaded twice at once.
//! - States as the API shows them: queued, active, paused, done, failed,
//!   skipped. At most `max_active` entries are active; the next to start
//!   is the queued one with the highest priority, then the oldest.
//! - A failure may be retried: the entry waits, failed, until its
//!   `retry_at` (a doubling backoff), then queues again by itself; after
//!   [`RetryPolicy::attempts`] failures in a row it stays failed until
//!   resumed.
//! - Bounded: at most `capacity` entries; when full, the oldest finished
//!   ones (done or skipped, then failed) make room.
//! - A saved queue is read back with [`DownloadQueue::restore`], which
//!   treats the file as untrusted (duplicates dropped, size bounded) and
//!   says which entries were active, to start them again.

use canopy_proto::ContentId;
use serde::{Deserialize, Serialize};

/// Entries kept at most, by default.
pub const DEFAULT_CAPACITY: usize = 10_000;

/// Where an entry stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryState {
    /// Waiting for a turn.
    Queued,
    /// Being fetched.
    Active,
    /// Stopped by the user.
    Paused,
    /// Verified and in place.
    Done,
    /// Gave up, for now (`retry_at`) or until resumed.
    Failed,
    /// Not fetched: the content is already here.
    Skipped,
}

impl EntryState {
    /// Done or skipped: nothing more will happen to it.
    pub fn is_finished(self) -> bool {
        matches!(self, EntryState::Done | EntryState::Skipped)
    }
}

/// One download in the queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueEntry {
    /// The content.
    #[serde(with = "hex_id")]
    pub id: ContentId,
    /// The name to save under, once known (asked for, or from the sources).
    pub name: Option<String>,
    /// Its size, once known.
    pub size: Option<u64>,
    /// Where it stands.
    pub state: EntryState,
    /// Higher starts first.
    pub priority: i32,
    /// Order of adding, for ties.
    pub seq: u64,
    /// When it was added, Unix seconds.
    pub added_at: u64,
    /// When it was done, skipped, or last failed, Unix seconds.
    pub finished_at: Option<u64>,
    /// The file it is saved to: chosen when it first starts (so a restart
    /// resumes into the same folder under the same name), the existing
    /// file when skipped.
    pub path: Option<String>,
    /// Why it failed or was skipped.
    pub error: Option<String>,
    /// Failures in a row.
    pub failures: u32,
    /// When a failed entry queues again by itself, Unix seconds.
    pub retry_at: Option<u64>,
    /// How its sources were reached ("direct", "push", "hole punch",
    /// "relay"), once done: at most [`MAX_PATHS`] names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
}

/// Most path names an entry keeps.
pub const MAX_PATHS: usize = 4;
/// Longest path name kept, in bytes.
const MAX_PATH_NAME: usize = 16;

/// `paths` deduplicated, sorted and bounded (they may come from a file).
fn bounded_paths(paths: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut kept: Vec<String> = paths
        .into_iter()
        .filter(|name| !name.is_empty() && name.len() <= MAX_PATH_NAME)
        .collect();
    kept.sort();
    kept.dedup();
    kept.truncate(MAX_PATHS);
    kept
}

/// A download to add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEntry {
    /// The content.
    pub id: ContentId,
    /// The name asked for.
    pub name: Option<String>,
    /// The size, if known (from a link).
    pub size: Option<u64>,
    /// Its priority.
    pub priority: i32,
}

/// When failed downloads are tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Wait after the first failure, seconds; doubles after each.
    pub first_wait: u64,
    /// Longest wait, seconds.
    pub max_wait: u64,
    /// Failures in a row after which the entry waits for a resume.
    pub attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            first_wait: 30,
            max_wait: 3600,
            attempts: 8,
        }
    }
}

impl RetryPolicy {
    /// The wait after the `failures`-th failure in a row, or `None` once
    /// there were too many.
    pub fn wait(&self, failures: u32) -> Option<u64> {
        if failures == 0 || failures > self.attempts {
            return None;
        }
        let doubled = self
            .first_wait
            .saturating_mul(1u64.checked_shl(failures - 1).unwrap_or(u64::MAX));
        Some(doubled.min(self.max_wait))
    }
}

/// The queue's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueConfig {
    /// Downloads active at once (at least 1).
    pub max_active: usize,
    /// Entries kept at most.
    pub capacity: usize,
    /// Retries of failed downloads.
    pub retry: RetryPolicy,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            max_active: 3,
            capacity: DEFAULT_CAPACITY,
            retry: RetryPolicy::default(),
        }
    }
}

/// Why the queue refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// No entry for that id.
    #[error("no download of {0} in the queue")]
    NotFound(ContentId),
    /// The queue holds `capacity` entries, none of them finished.
    #[error("the queue is full ({0} downloads not finished)")]
    Full(usize),
    /// The entry's state does not allow it.
    #[error("the download is {state:?}: cannot {action}")]
    Conflict {
        /// The entry's state.
        state: EntryState,
        /// What was asked.
        action: &'static str,
    },
}

/// What the caller must do after a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The entry was being fetched: stop the fetch.
    Running,
    /// Nothing was running.
    Idle,
}

/// The queue as saved in `queue.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedQueue {
    /// The next `seq` to hand out.
    pub next_seq: u64,
    /// Every entry, oldest first.
    pub entries: Vec<QueueEntry>,
}

/// Counts by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueCounts {
    /// Waiting for a turn.
    pub queued: usize,
    /// Being fetched.
    pub active: usize,
    /// Paused.
    pub paused: usize,
    /// Done or skipped.
    pub finished: usize,
    /// Failed.
    pub failed: usize,
}

/// The download queue. See the module documentation.
#[derive(Debug, Clone)]
pub struct DownloadQueue {
    config: QueueConfig,
    /// Oldest first (by `seq`).
    entries: Vec<QueueEntry>,
    next_seq: u64,
}

impl DownloadQueue {
    /// An empty queue.
    pub fn new(config: QueueConfig) -> Self {
        Self {
            config: Self::checked(config),
            entries: Vec::new(),
            next_seq: 0,
        }
    }

    fn checked(mut config: QueueConfig) -> QueueConfig {
        config.max_active = config.max_active.max(1);
        config.capacity = config.capacity.max(1);
        config
    }

    /// A queue read back from `saved` (an untrusted file): later
    /// duplicates of an id are dropped, entries over `capacity` too
    /// (oldest finished first), and the ids that were active are returned
    /// to be started again (those over `max_active` queue instead).
    pub fn restore(saved: SavedQueue, config: QueueConfig) -> (Self, Vec<ContentId>) {
        let mut queue = Self::new(config);
        let mut entries = saved.entries;
        entries.sort_by_key(|e| e.seq);
        for mut entry in entries {
            if queue.find(&entry.id).is_none() {
                entry.paths = bounded_paths(std::mem::take(&mut entry.paths));
                queue.entries.push(entry);
            }
        }
        while queue.entries.len() > queue.config.capacity {
            let victim = queue.prune_candidate().unwrap_or(0);
            queue.entries.remove(victim);
        }
        let max_seq = queue.entries.iter().map(|e| e.seq).max();
        queue.next_seq = saved
            .next_seq
            .max(max_seq.map_or(0, |s| s.saturating_add(1)));
        let mut restarted = Vec::new();
        for index in queue.start_order() {
            let entry = &mut queue.entries[index];
            if entry.state == EntryState::Active {
                if restarted.len() < queue.config.max_active {
                    restarted.push(entry.id);
                } else {
                    entry.state = EntryState::Queued;
                }
            }
        }
        (queue, restarted)
    }

    /// The queue to save.
    pub fn save(&self) -> SavedQueue {
        SavedQueue {
            next_seq: self.next_seq,
            entries: self.entries.clone(),
        }
    }

    /// The limits in force.
    pub fn config(&self) -> QueueConfig {
        self.config
    }

    /// Downloads active at once from now on. Lowering it stops nothing:
    /// running downloads finish, and no new one starts until there is room.
    pub fn set_max_active(&mut self, max_active: usize) {
        self.config.max_active = max_active.max(1);
    }

    fn find(&self, id: &ContentId) -> Option<usize> {
        self.entries.iter().position(|e| &e.id == id)
    }

    fn entry_mut(&mut self, id: &ContentId) -> Result<&mut QueueEntry, QueueError> {
        let index = self.find(id).ok_or(QueueError::NotFound(*id))?;
        Ok(&mut self.entries[index])
    }

    /// The entry for `id`.
    pub fn get(&self, id: &ContentId) -> Option<&QueueEntry> {
        self.find(id).map(|i| &self.entries[i])
    }

    /// How many entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Indices in the order downloads start: priority, then age.
    fn start_order(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.entries.len()).collect();
        order.sort_by_key(|&i| {
            (
                std::cmp::Reverse(self.entries[i].priority),
                self.entries[i].seq,
            )
        });
        order
    }

    /// Every entry in queue order: by priority (higher first), then age.
    pub fn entries(&self) -> Vec<&QueueEntry> {
        self.start_order()
            .into_iter()
            .map(|i| &self.entries[i])
            .collect()
    }

    /// Counts by state.
    pub fn counts(&self) -> QueueCounts {
        let mut counts = QueueCounts::default();
        for entry in &self.entries {
            match entry.state {
                EntryState::Queued => counts.queued += 1,
                EntryState::Active => counts.active += 1,
                EntryState::Paused => counts.paused += 1,
                EntryState::Done | EntryState::Skipped => counts.finished += 1,
                EntryState::Failed => counts.failed += 1,
            }
        }
        counts
    }

    /// The entry to drop to make room: the oldest done or skipped one,
    /// else the oldest failed one that will not retry by itself.
    fn prune_candidate(&self) -> Option<usize> {
        let oldest = |pick: &dyn Fn(&QueueEntry) -> bool| {
            self.entries
                .iter()
                .enumerate()
                .filter(|(_, e)| pick(e))
                .min_by_key(|(_, e)| (e.finished_at.unwrap_or(0), e.seq))
                .map(|(i, _)| i)
        };
        oldest(&|e| e.state.is_finished())
            .or_else(|| oldest(&|e| e.state == EntryState::Failed && e.retry_at.is_none()))
    }

    /// Adds a download, queued. `Ok((entry, true))` if added,
    /// `Ok((entry, false))` if that id was already in the queue (left as
    /// it was).
    pub fn add(&mut self, new: NewEntry, now: u64) -> Result<(&QueueEntry, bool), QueueError> {
        if let Some(index) = self.find(&new.id) {
            return Ok((&self.entries[index], false));
        }
        if self.entries.len() >= self.config.capacity {
            let victim = self
                .prune_candidate()
                .ok_or(QueueError::Full(self.entries.len()))?;
            self.entries.remove(victim);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.entries.push(QueueEntry {
            id: new.id,
            name: new.name,
            size: new.size,
            state: EntryState::Queued,
            priority: new.priority,
            seq,
            added_at: now,
            finished_at: None,
            path: None,
            error: None,
            failures: 0,
            retry_at: None,
            paths: Vec::new(),
        });
        let last = self.entries.len() - 1;
        Ok((&self.entries[last], true))
    }

    /// Pauses a queued, active or failed download.
    pub fn pause(&mut self, id: &ContentId) -> Result<Stop, QueueError> {
        let entry = self.entry_mut(id)?;
        let stop = match entry.state {
            EntryState::Active => Stop::Running,
            EntryState::Queued | EntryState::Failed | EntryState::Paused => Stop::Idle,
            state => {
                return Err(QueueError::Conflict {
                    state,
                    action: "pause",
                });
            }
        };
        entry.state = EntryState::Paused;
        entry.retry_at = None;
        Ok(stop)
    }

    /// Queues a paused or failed download again (its failures forgotten);
    /// a queued or active one is left as it is.
    pub fn resume(&mut self, id: &ContentId) -> Result<(), QueueError> {
        let entry = self.entry_mut(id)?;
        match entry.state {
            EntryState::Paused | EntryState::Failed => {
                entry.state = EntryState::Queued;
                entry.failures = 0;
                entry.retry_at = None;
                entry.error = None;
                Ok(())
            }
            EntryState::Queued | EntryState::Active => Ok(()),
            state => Err(QueueError::Conflict {
                state,
                action: "resume",
            }),
        }
    }

    /// Removes a download from the queue and returns it; if it was
    /// active, the caller stops its fetch.
    pub fn cancel(&mut self, id: &ContentId) -> Result<QueueEntry, QueueError> {
        let index = self.find(id).ok_or(QueueError::NotFound(*id))?;
        Ok(self.entries.remove(index))
    }

    /// Changes a download's priority.
    pub fn set_priority(&mut self, id: &ContentId, priority: i32) -> Result<(), QueueError> {
        self.entry_mut(id)?.priority = priority;
        Ok(())
    }

    /// Records what a starting download learned: its name, size, and the
    /// file it is saved to. Returns whether anything changed.
    pub fn set_details(
        &mut self,
        id: &ContentId,
        name: Option<String>,
        size: Option<u64>,
        path: Option<String>,
    ) -> Result<bool, QueueError> {
        let entry = self.entry_mut(id)?;
        let before = (entry.name.clone(), entry.size, entry.path.clone());
        entry.name = name.or(entry.name.take());
        entry.size = size.or(entry.size);
        entry.path = path.or(entry.path.take());
        Ok(before != (entry.name.clone(), entry.size, entry.path.clone()))
    }

    /// The ways the download's sources were reached (see
    /// [`QueueEntry::paths`]).
    pub fn set_paths(
        &mut self,
        id: &ContentId,
        paths: impl IntoIterator<Item = String>,
    ) -> Result<(), QueueError> {
        self.entry_mut(id)?.paths = bounded_paths(paths);
        Ok(())
    }

    /// The download is verified and at `path`. Accepted from any state but
    /// done or skipped: a fetch that completes as it is paused is done.
    pub fn finish(&mut self, id: &ContentId, path: String, now: u64) -> Result<(), QueueError> {
        let entry = self.entry_mut(id)?;
        if entry.state.is_finished() {
            return Err(QueueError::Conflict {
                state: entry.state,
                action: "finish",
            });
        }
        entry.state = EntryState::Done;
        entry.path = Some(path);
        entry.finished_at = Some(now);
        entry.error = None;
        entry.retry_at = None;
        entry.failures = 0;
        Ok(())
    }

    /// The content is already here, at `path`, so it is not fetched.
    pub fn skip(
        &mut self,
        id: &ContentId,
        path: String,
        reason: String,
        now: u64,
    ) -> Result<(), QueueError> {
        let entry = self.entry_mut(id)?;
        if entry.state.is_finished() {
            return Err(QueueError::Conflict {
                state: entry.state,
                action: "skip",
            });
        }
        entry.state = EntryState::Skipped;
        entry.path = Some(path);
        entry.error = Some(reason);
        entry.finished_at = Some(now);
        entry.retry_at = None;
        Ok(())
    }

    /// An active download failed. If `retryable`, it queues again by
    /// itself after the policy's wait (while attempts remain). Only an
    /// active entry fails: one paused or cancelled meanwhile is left alone.
    pub fn fail(
        &mut self,
        id: &ContentId,
        reason: String,
        retryable: bool,
        now: u64,
    ) -> Result<(), QueueError> {
        let retry = self.config.retry;
        let entry = self.entry_mut(id)?;
        if entry.state != EntryState::Active {
            return Err(QueueError::Conflict {
                state: entry.state,
                action: "fail",
            });
        }
        entry.state = EntryState::Failed;
        entry.failures = entry.failures.saturating_add(1);
        entry.error = Some(reason);
        entry.finished_at = Some(now);
        entry.retry_at = if retryable {
            retry
                .wait(entry.failures)
                .map(|wait| now.saturating_add(wait))
        } else {
            None
        };
        Ok(())
    }

    /// What starts now: failed entries whose retry time came queue again,
    /// then queued entries become active, best first, while fewer than
    /// `max_active` are. The caller starts a fetch for each id returned.
    pub fn poll_starts(&mut self, now: u64) -> Vec<ContentId> {
        for entry in &mut self.entries {
            if entry.state == EntryState::Failed && entry.retry_at.is_some_and(|at| at <= now) {
                entry.state = EntryState::Queued;
                entry.retry_at = None;
            }
        }
        let mut active = self.counts().active;
        let mut started = Vec::new();
        for index in self.start_order() {
            if active >= self.config.max_active {
                break;
            }
            let entry = &mut self.entries[index];
            if entry.state == EntryState::Queued {
                entry.state = EntryState::Active;
                active += 1;
                started.push(entry.id);
            }
        }
        started
    }

    /// The earliest time a failed entry queues again, to wake up then.
    pub fn next_retry(&self) -> Option<u64> {
        self.entries
            .iter()
            .filter(|e| e.state == EntryState::Failed)
            .filter_map(|e| e.retry_at)
            .min()
    }
}

/// Content ids as 64 hex characters in JSON.
mod hex_id {
    use canopy_proto::ContentId;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(id: &ContentId, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&id.to_hex())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ContentId, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ContentId {
        ContentId([n; 32])
    }

    fn new(n: u8, priority: i32) -> NewEntry {
        NewEntry {
            id: id(n),
            name: Some(format!("file{n}")),
            size: None,
            priority,
        }
    }

    fn queue(max_active: usize) -> DownloadQueue {
        DownloadQueue::new(QueueConfig {
            max_active,
            ..QueueConfig::default()
        })
    }

    fn state(q: &DownloadQueue, n: u8) -> EntryState {
        q.get(&id(n))
            .map(|e| e.state)
            .unwrap_or(EntryState::Skipped)
    }

    #[test]
    fn one_entry_per_content_id() {
        let mut q = queue(2);
        let (entry, added) = q.add(new(1, 0), 100).unwrap();
        assert!(added);
        assert_eq!(entry.added_at, 100);
        assert_eq!(q.poll_starts(100), [id(1)]);
        let (entry, added) = q.add(new(1, 5), 200).unwrap();
        assert!(!added);
        assert_eq!(entry.state, EntryState::Active);
        assert_eq!(entry.priority, 0, "the existing entry is left as it was");
        assert_eq!(q.len(), 1);
        assert!(q.poll_starts(200).is_empty(), "never two fetches of one id");
    }

    #[test]
    fn starts_at_most_max_active_by_priority_then_age() {
        let mut q = queue(2);
        for (n, priority) in [(1, 0), (2, 0), (3, 5), (4, 0)] {
            q.add(new(n, priority), 0).unwrap();
        }
        assert_eq!(q.poll_starts(0), [id(3), id(1)]);
        assert!(q.poll_starts(1).is_empty());
        assert_eq!(q.counts().active, 2);
        q.set_priority(&id(4), 1).unwrap();
        q.finish(&id(3), "/d/file3".into(), 2).unwrap();
        assert_eq!(q.poll_starts(2), [id(4)]);
        q.set_max_active(3);
        assert_eq!(q.poll_starts(3), [id(2)]);
        let order: Vec<ContentId> = q.entries().iter().map(|e| e.id).collect();
        assert_eq!(order, [id(3), id(4), id(1), id(2)]);
        q.set_max_active(0);
        assert_eq!(q.config().max_active, 1, "at least one");
    }

    #[test]
    fn pause_resume_and_cancel() {
        let mut q = queue(1);
        q.add(new(1, 0), 0).unwrap();
        q.add(new(2, 0), 0).unwrap();
        assert_eq!(q.poll_starts(0), [id(1)]);
        assert_eq!(q.pause(&id(1)), Ok(Stop::Running));
        assert_eq!(q.pause(&id(2)), Ok(Stop::Idle));
        assert!(q.poll_starts(1).is_empty(), "paused entries do not start");
        q.resume(&id(2)).unwrap();
        assert_eq!(q.poll_starts(2), [id(2)]);
        assert_eq!(
            q.fail(&id(1), "late".into(), true, 3),
            Err(QueueError::Conflict {
                state: EntryState::Paused,
                action: "fail"
            }),
            "a paused fetch that reports its cancellation stays paused"
        );
        let removed = q.cancel(&id(2)).unwrap();
        assert_eq!(removed.state, EntryState::Active);
        assert_eq!(q.cancel(&id(2)), Err(QueueError::NotFound(id(2))));
        q.resume(&id(1)).unwrap();
        assert_eq!(q.poll_starts(4), [id(1)]);
        q.finish(&id(1), "/d/f".into(), 5).unwrap();
        assert!(matches!(
            q.pause(&id(1)),
            Err(QueueError::Conflict {
                state: EntryState::Done,
                ..
            })
        ));
        assert!(matches!(q.resume(&id(1)), Err(QueueError::Conflict { .. })));
        assert_eq!(q.resume(&id(9)), Err(QueueError::NotFound(id(9))));
    }

    #[test]
    fn failures_retry_after_a_doubling_wait_then_wait_for_a_resume() {
        let mut q = DownloadQueue::new(QueueConfig {
            max_active: 1,
            capacity: 10,
            retry: RetryPolicy {
                first_wait: 10,
                max_wait: 25,
                attempts: 3,
            },
        });
        q.add(new(1, 0), 0).unwrap();
        let mut now = 0;
        for wait in [10, 20, 25] {
            assert_eq!(q.poll_starts(now), [id(1)]);
            q.fail(&id(1), "no sources".into(), true, now).unwrap();
            assert_eq!(q.next_retry(), Some(now + wait));
            assert!(q.poll_starts(now + wait - 1).is_empty());
            now += wait;
        }
        assert_eq!(q.poll_starts(now), [id(1)]);
        q.fail(&id(1), "no sources".into(), true, now).unwrap();
        assert_eq!(q.next_retry(), None, "out of attempts");
        assert!(q.poll_starts(u64::MAX).is_empty());
        assert_eq!(q.get(&id(1)).unwrap().error.as_deref(), Some("no sources"));
        q.resume(&id(1)).unwrap();
        assert_eq!(q.get(&id(1)).unwrap().failures, 0);
        assert_eq!(q.poll_starts(now), [id(1)]);
        q.fail(&id(1), "disk full".into(), false, now).unwrap();
        assert_eq!(q.next_retry(), None, "not retryable");
        assert_eq!(RetryPolicy::default().wait(100), None);
        assert_eq!(RetryPolicy::default().wait(0), None);
    }

    #[test]
    fn a_full_queue_drops_its_oldest_finished_entries_first() {
        let mut q = DownloadQueue::new(QueueConfig {
            max_active: 10,
            capacity: 3,
            retry: RetryPolicy::default(),
        });
        for n in 1..=3 {
            q.add(new(n, 0), 0).unwrap();
        }
        assert_eq!(q.add(new(4, 0), 0), Err(QueueError::Full(3)));
        q.poll_starts(0);
        q.finish(&id(2), "/d/2".into(), 50).unwrap();
        q.skip(&id(3), "/s/3".into(), "already shared".into(), 40)
            .unwrap();
        q.add(new(4, 0), 60).unwrap();
        assert!(
            q.get(&id(3)).is_none(),
            "skipped at 40 is the oldest finished"
        );
        q.add(new(5, 0), 60).unwrap();
        assert!(q.get(&id(2)).is_none());
        q.fail(&id(1), "x".into(), false, 70).unwrap();
        q.add(new(6, 0), 80).unwrap();
        assert!(
            q.get(&id(1)).is_none(),
            "then failed ones that will not retry"
        );
        assert_eq!(q.len(), 3);
    }

    #[test]
    fn a_saved_queue_restores_and_restarts_what_was_active() {
        let mut q = queue(2);
        for n in 1..=4 {
            q.add(new(n, 0), 0).unwrap();
        }
        q.poll_starts(0);
        q.set_details(&id(1), None, Some(42), Some("/d/file1".into()))
            .unwrap();
        let json = serde_json::to_string(&q.save()).unwrap();
        assert!(json.contains(&id(1).to_hex()), "{json}");
        let saved: SavedQueue = serde_json::from_str(&json).unwrap();
        let (restored, restarted) = DownloadQueue::restore(saved, q.config());
        assert_eq!(restarted, [id(1), id(2)]);
        assert_eq!(restored.save(), q.save());
        assert_eq!(
            restored.get(&id(1)).unwrap().path.as_deref(),
            Some("/d/file1")
        );
        assert_eq!(restored.get(&id(1)).unwrap().size, Some(42));
        // Fewer slots now: the extra active entry queues.
        let (smaller, restarted) = DownloadQueue::restore(
            q.save(),
            QueueConfig {
                max_active: 1,
                ..QueueConfig::default()
            },
        );
        assert_eq!(restarted, [id(1)]);
        assert_eq!(state(&smaller, 2), EntryState::Queued);
        // New entries never reuse a seq.
        let mut again = smaller;
        let (entry, _) = again.add(new(9, 0), 0).unwrap();
        assert_eq!(entry.seq, 4);
    }

    #[test]
    fn a_hostile_saved_queue_is_deduplicated_and_bounded() {
        let mut q = queue(5);
        for n in 1..=5 {
            q.add(new(n, 0), 0).unwrap();
        }
        let mut saved = q.save();
        let mut duplicate = saved.entries[0].clone();
        duplicate.seq = 99;
        duplicate.state = EntryState::Active;
        saved.entries.push(duplicate);
        saved.next_seq = 0;
        let (restored, restarted) = DownloadQueue::restore(
            saved,
            QueueConfig {
                capacity: 3,
                ..QueueConfig::default()
            },
        );
        assert!(restarted.is_empty(), "the duplicate was dropped");
        assert_eq!(restored.len(), 3);
        assert_eq!(restored.save().next_seq, 5);
        assert!(
            serde_json::from_str::<SavedQueue>(r#"{"next_seq":0,"entries":[{"id":"zz"}]}"#)
                .is_err()
        );
    }

    #[test]
    fn the_paths_a_download_took_are_kept_bounded() {
        let mut q = queue(1);
        q.add(new(1, 0), 0).unwrap();
        let names = ["relay", "push", "relay", "a name far too long to be a path", "direct"];
        q.set_paths(&id(1), names.map(String::from)).unwrap();
        let kept = q.entries()[0].paths.clone();
        assert_eq!(kept, ["direct", "push", "relay"]);
        // From a file: bounded too.
        let mut saved = q.save();
        saved.entries[0].paths = (0..100).map(|n| format!("p{n}")).collect();
        let (restored, _) = DownloadQueue::restore(saved, QueueConfig::default());
        assert_eq!(restored.entries()[0].paths.len(), MAX_PATHS);
    }
}
