//! A body's own pace: the gaps between its recent chunks, and how long a silence must last
//! before it counts as a stall (far longer than those gaps, within a floor and a cap). A stall
//! is judged against the stream itself, so a flapping link is caught in about a second while a
//! steady slow body is left alone; the fixed body timeouts stay as the outer bounds.

use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

/// A silence this many times the longest recent gap between chunks is a stall...
const PACE_FACTOR: u32 = 8;
/// ...judged over this many recent gaps...
const RECENT_GAPS: usize = 32;
/// ...and never waited for longer than this many times the floor.
const CAP_OVER_FLOOR: u32 = 4;

/// The pace of one body as its chunks arrive.
#[derive(Debug)]
pub(crate) struct BodyPace {
    floor: Duration,
    cap: Duration,
    last_chunk: Instant,
    gaps: VecDeque<Duration>,
    /// A chunk has arrived: the body is flowing, and only a flowing body can stall.
    flowing: bool,
}

impl BodyPace {
    /// A body whose headers just arrived; a silence shorter than `floor` is never a stall.
    pub(crate) fn new(floor: Duration) -> Self {
        BodyPace {
            floor,
            cap: floor.saturating_mul(CAP_OVER_FLOOR),
            last_chunk: Instant::now(),
            gaps: VecDeque::with_capacity(RECENT_GAPS),
            flowing: false,
        }
    }

    /// How long the body may now stay silent before it counts as stalled.
    pub(crate) fn stall_after(&self) -> Duration {
        let longest = self.gaps.iter().max().copied().unwrap_or_default();
        longest
            .saturating_mul(PACE_FACTOR)
            .clamp(self.floor, self.cap)
    }

    /// Whether the body has delivered a chunk. Before its first byte a body is not judged by
    /// pace: a tier that answers a resume from a fill still short of that offset is silent
    /// until its fill gets there, and a hedge then would start a second fill of the blob.
    pub(crate) fn is_flowing(&self) -> bool {
        self.flowing
    }

    /// A chunk arrived: its gap joins the recent ones.
    pub(crate) fn chunk_arrived(&mut self) {
        let now = Instant::now();
        self.flowing = true;
        if self.gaps.len() == RECENT_GAPS {
            self.gaps.pop_front();
        }
        self.gaps.push_back(now - self.last_chunk);
        self.last_chunk = now;
    }

    /// The body spoke again after a stall: the clock restarts, and the stall itself is not
    /// taken as the body's pace (or one outage would excuse the next).
    pub(crate) fn resumed_after_stall(&mut self) {
        self.last_chunk = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_stall_is_judged_by_the_body_own_gaps_within_floor_and_cap() {
        let floor = Duration::from_secs(1);
        let mut pace = BodyPace::new(floor);
        assert_eq!(pace.stall_after(), floor, "no history: the floor");
        assert!(!pace.is_flowing());
        // A fast body: 5 ms gaps would allow 40 ms, but the floor holds.
        for _ in 0..10 {
            tokio::time::advance(Duration::from_millis(5)).await;
            pace.chunk_arrived();
        }
        assert_eq!(pace.stall_after(), floor);
        // A slow, steady drip of 300 ms gaps: 8 x 300 ms = 2.4 s.
        for _ in 0..3 {
            tokio::time::advance(Duration::from_millis(300)).await;
            pace.chunk_arrived();
        }
        assert_eq!(pace.stall_after(), Duration::from_millis(2400));
        // A drip slower still reaches the cap (4 x the floor), never more.
        tokio::time::advance(Duration::from_secs(2)).await;
        pace.chunk_arrived();
        assert_eq!(pace.stall_after(), floor * 4);
        // The slow gaps age out after 32 fast ones.
        for _ in 0..RECENT_GAPS {
            tokio::time::advance(Duration::from_millis(10)).await;
            pace.chunk_arrived();
        }
        assert_eq!(pace.stall_after(), floor);
        // A stall that ended is not taken as pace.
        tokio::time::advance(Duration::from_secs(5)).await;
        pace.resumed_after_stall();
        tokio::time::advance(Duration::from_millis(10)).await;
        pace.chunk_arrived();
        assert_eq!(pace.stall_after(), floor);
    }
}
