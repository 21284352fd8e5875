//! A connection's outgoing queue: encoded frames in priority lanes, bounded
//! in bytes.
//!
//! When a peer reads more slowly than we write, the queue fills. A new
//! frame then evicts queued frames of lower priority, oldest first, and is
//! itself dropped if nothing below it is left to evict; every drop is
//! counted. The writer always takes the highest lane first, FIFO within a
//! lane. Priorities follow gtk-gnutella's: pings and queries are worth
//! least, then pongs, hits, pushes, publishing; the handshake and Bye are
//! never dropped.
//!
//! A peer is too slow when nothing has moved for the stall timeout while
//! something waits to go: frames in the queue, or a write the writer has
//! begun and the socket has not taken (the kernel's send buffer can absorb
//! the whole queue, so an empty queue does not mean a reading peer).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use canopy_proto::Message;
use tokio::sync::Notify;

/// An emptied lane this small is let go of.
const IDLE_LANE_FRAMES: usize = 8;

/// Bytes of encoded frames a connection may have queued.
pub const SEND_QUEUE_BYTES: usize = 256 * 1024;

/// How much a message is worth keeping when its peer is slow; higher
/// survives longer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    /// Pings and queries: cheap to lose, the sender retries or gets
    /// answers from elsewhere.
    Low = 0,
    /// Pongs.
    Pong = 1,
    /// Hits: someone is waiting for them.
    Hit = 2,
    /// Pushes: a download waits on them.
    Push = 3,
    /// File lists and deltas, routing filter patches: losing one makes
    /// the index or the peer's filter wrong.
    Sharing = 4,
    /// Handshake and Bye: never dropped.
    Control = 5,
}

const LANES: usize = 6;

impl Priority {
    /// The priority of `message`.
    pub fn of(message: &Message) -> Self {
        match message {
            Message::Ping { .. } | Message::Query(_) => Priority::Low,
            Message::Pong { .. } => Priority::Pong,
            Message::QueryHit(_) | Message::QueryStatus { .. } => Priority::Hit,
            Message::Push(_) => Priority::Push,
            Message::FileList { .. } | Message::FileDelta { .. } | Message::FilterPatch(_) => {
                Priority::Sharing
            }
            Message::Hello(_)
            | Message::HelloReply(_)
            | Message::Bye { .. }
            | Message::Reachability { .. }
            | Message::Announce { .. } => Priority::Control,
        }
    }
}

/// What became of a frame offered to the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pushed {
    /// The new frame was dropped.
    pub dropped_new: bool,
    /// Queued frames evicted to make room.
    pub evicted: usize,
    /// Of the frames lost (new or evicted), how many were Low (queries or pings).
    pub low_lost: usize,
    /// The queue was full and has not moved for the stall timeout.
    pub stuck: bool,
}

/// What offering frames to a queue cost, summed over frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Losses {
    /// Frames lost: new ones dropped and queued ones evicted.
    pub lost: usize,
    /// Of those, queries and pings.
    pub low_lost: usize,
    /// The queue was full and has not moved for the stall timeout.
    pub stuck: bool,
}

impl Losses {
    /// Adds what one push cost.
    pub fn add(&mut self, pushed: Pushed) {
        self.lost += pushed.evicted + usize::from(pushed.dropped_new);
        self.low_lost += pushed.low_lost;
        self.stuck |= pushed.stuck;
    }
}

/// The next thing for the writer.
#[derive(Debug)]
pub enum Next {
    /// A frame to write.
    Frame(Bytes),
    /// Write this Bye (if any), then close.
    Close(Option<Bytes>),
}

#[derive(Debug)]
struct State {
    lanes: [VecDeque<Bytes>; LANES],
    bytes: usize,
    closing: Option<Option<Bytes>>,
    /// When something last moved; `None` when it just did (or the queue
    /// just filled from empty): the clock is read when someone looks, not
    /// on every frame.
    last_progress: Option<Instant>,
    /// The writer is inside a write to the socket.
    writing: bool,
}

impl State {
    /// How long nothing has moved; starts counting now if it just did.
    fn since_progress(&mut self) -> Duration {
        self.last_progress
            .get_or_insert_with(Instant::now)
            .elapsed()
    }
}

/// See the module documentation.
#[derive(Debug)]
pub struct SendQueue {
    state: Mutex<State>,
    wake: Notify,
    capacity: usize,
    stall_timeout: Duration,
}

impl SendQueue {
    /// A queue of `capacity` bytes whose peer is too slow once it has not
    /// moved for `stall_timeout` while full.
    pub fn new(capacity: usize, stall_timeout: Duration) -> Self {
        Self {
            state: Mutex::new(State {
                lanes: Default::default(),
                bytes: 0,
                closing: None,
                last_progress: None,
                writing: false,
            }),
            wake: Notify::new(),
            capacity,
            stall_timeout,
        }
    }

    /// Offers `frame`; see [`Pushed`].
    pub fn push(&self, frame: Bytes, priority: Priority) -> Pushed {
        let outcome = match self.state.lock() {
            Ok(mut state) => self.push_locked(&mut state, frame, priority),
            Err(_) => Pushed {
                dropped_new: true,
                ..Pushed::default()
            },
        };
        self.wake.notify_one();
        outcome
    }

    /// Offers every frame of `frames` (emptying it) under one lock, with
    /// one wakeup; the outcomes are summed.
    pub fn push_all(&self, frames: &mut Vec<(Bytes, Priority)>) -> Losses {
        let mut total = Losses::default();
        let Ok(mut state) = self.state.lock() else {
            total.lost = frames.len();
            frames.clear();
            return total;
        };
        for (frame, priority) in frames.drain(..) {
            total.add(self.push_locked(&mut state, frame, priority));
        }
        drop(state);
        self.wake.notify_one();
        total
    }

    fn push_locked(&self, state: &mut State, frame: Bytes, priority: Priority) -> Pushed {
        let mut outcome = Pushed::default();
        if state.closing.is_some() {
            outcome.dropped_new = true;
            return outcome;
        }
        let len = frame.len();
        if state.bytes + len > self.capacity && priority != Priority::Control {
            if state.since_progress() >= self.stall_timeout {
                outcome.stuck = true;
            }
            // Evict lower lanes, lowest and oldest first, until it fits.
            for lane in 0..priority as usize {
                while state.bytes + len > self.capacity {
                    let Some(old) = state.lanes[lane].pop_front() else {
                        break;
                    };
                    state.bytes -= old.len();
                    outcome.evicted += 1;
                    if lane == Priority::Low as usize {
                        outcome.low_lost += 1;
                    }
                }
            }
            if state.bytes + len > self.capacity {
                outcome.dropped_new = true;
                if priority == Priority::Low {
                    outcome.low_lost += 1;
                }
                return outcome;
            }
        }
        if state.bytes == 0 && !state.writing {
            // An empty queue is not stalled, however long it sat idle.
            state.last_progress = None;
        }
        state.bytes += len;
        state.lanes[priority as usize].push_back(frame);
        outcome
    }

    /// Flush what is queued, then the Bye (if any), then close.
    pub fn close(&self, bye: Option<Bytes>) {
        if let Ok(mut state) = self.state.lock() {
            state.closing.get_or_insert(bye);
        }
        self.wake.notify_one();
    }

    /// The next frame, highest lane first, without waiting.
    pub fn try_next(&self) -> Option<Next> {
        let mut state = self.state.lock().ok()?;
        for lane in (0..LANES).rev() {
            if let Some(frame) = state.lanes[lane].pop_front() {
                state.bytes -= frame.len();
                state.last_progress = None;
                return Some(Next::Frame(frame));
            }
        }
        state.closing.take().map(Next::Close)
    }

    /// Moves queued frames, highest lane first, onto `batch` until it holds
    /// `max_frames` frames or `max_bytes` bytes, under one lock. Returns
    /// true once the queue is closing and drained: its Bye (if any) is then
    /// the last frame of the batch.
    pub fn drain_into(
        &self,
        batch: &mut VecDeque<Bytes>,
        batch_bytes: &mut usize,
        max_frames: usize,
        max_bytes: usize,
    ) -> bool {
        let Ok(mut state) = self.state.lock() else {
            return true;
        };
        let state = &mut *state;
        for lane in state.lanes.iter_mut().rev() {
            while batch.len() < max_frames && *batch_bytes < max_bytes {
                let Some(frame) = lane.pop_front() else {
                    break;
                };
                state.bytes -= frame.len();
                state.last_progress = None;
                *batch_bytes += frame.len();
                batch.push_back(frame);
            }
            // Most leaves' lanes see a frame now and then: an emptied
            // small lane lets go of its memory.
            if lane.is_empty() && lane.capacity() <= IDLE_LANE_FRAMES {
                *lane = VecDeque::new();
            }
        }
        if state.bytes > 0 {
            return false;
        }
        match state.closing.take() {
            Some(bye) => {
                if let Some(bye) = bye {
                    *batch_bytes += bye.len();
                    batch.push_back(bye);
                }
                true
            }
            None => false,
        }
    }

    /// The next frame, waiting for one.
    pub async fn next(&self) -> Next {
        loop {
            if let Some(next) = self.try_next() {
                return next;
            }
            // A notify_one while we were looking leaves a permit: no lost wakeup.
            self.wake.notified().await;
        }
    }

    /// True if something waits to go (queued frames, or a write under way)
    /// and nothing has moved for the stall timeout: the peer is not reading.
    pub fn is_stalled(&self) -> bool {
        self.state
            .lock()
            .map(|mut s| (s.bytes > 0 || s.writing) && s.since_progress() >= self.stall_timeout)
            .unwrap_or(false)
    }

    /// The writer starts writing to the socket.
    pub fn begin_write(&self) {
        if let Ok(mut state) = self.state.lock() {
            if !state.writing {
                state.writing = true;
                state.last_progress = Some(Instant::now());
            }
        }
    }

    /// The socket took what the writer had.
    pub fn end_write(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.writing = false;
            state.last_progress = None;
        }
    }

    /// Bytes queued.
    pub fn len_bytes(&self) -> usize {
        self.state.lock().map(|s| s.bytes).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8, len: usize) -> Bytes {
        Bytes::from(vec![tag; len])
    }

    fn drain(queue: &SendQueue) -> Vec<u8> {
        let mut tags = Vec::new();
        while let Some(Next::Frame(f)) = queue.try_next() {
            tags.push(f[0]);
        }
        tags
    }

    #[test]
    fn higher_lanes_go_first_fifo_within_a_lane() {
        let queue = SendQueue::new(1000, Duration::from_secs(30));
        queue.push(frame(1, 10), Priority::Low);
        queue.push(frame(2, 10), Priority::Hit);
        queue.push(frame(3, 10), Priority::Low);
        queue.push(frame(4, 10), Priority::Control);
        assert_eq!(drain(&queue), vec![4, 2, 1, 3]);
        assert_eq!(queue.len_bytes(), 0);
    }

    #[test]
    fn when_full_queries_go_before_hits_and_control_always_fits() {
        let queue = SendQueue::new(100, Duration::from_secs(30));
        for tag in 0..5 {
            queue.push(frame(tag, 20), Priority::Low);
        }
        // A hit evicts the oldest query.
        let pushed = queue.push(frame(10, 20), Priority::Hit);
        assert_eq!(
            (pushed.evicted, pushed.low_lost, pushed.dropped_new),
            (1, 1, false)
        );
        // A query finds nothing lower to evict: it is dropped.
        let pushed = queue.push(frame(11, 20), Priority::Low);
        assert!(pushed.dropped_new);
        assert_eq!(pushed.low_lost, 1);
        // A Bye is never dropped.
        assert!(!queue.push(frame(12, 50), Priority::Control).dropped_new);
        assert_eq!(drain(&queue), vec![12, 10, 1, 2, 3, 4]);
    }

    #[test]
    fn a_queue_with_frames_that_do_not_move_is_stalled() {
        let queue = SendQueue::new(1000, Duration::ZERO);
        assert!(!queue.is_stalled(), "empty is never stalled");
        queue.push(frame(1, 10), Priority::Hit);
        assert!(queue.is_stalled());
        queue.try_next();
        assert!(!queue.is_stalled());
    }

    #[test]
    fn a_write_the_socket_does_not_take_is_stalled() {
        let queue = SendQueue::new(1000, Duration::ZERO);
        queue.begin_write();
        assert!(queue.is_stalled(), "empty queue, but the writer is stuck");
        queue.end_write();
        assert!(!queue.is_stalled());
    }

    #[test]
    fn a_full_queue_that_does_not_move_is_stuck() {
        let queue = SendQueue::new(10, Duration::ZERO);
        assert!(
            !queue.push(frame(1, 10), Priority::Hit).stuck,
            "not full yet"
        );
        assert!(queue.push(frame(2, 10), Priority::Hit).stuck);
    }
}
