//! Replicated time: the stamps a leader puts on entries.
//!
//! Expiry (TTL keys, leases, the de-duplication window) is decided by entry stamps, so a stamp
//! must not jump when a wall clock does. Within a term the leader's time advances by its
//! monotonic clock ([`Instant`]), and moves toward its wall clock by at most 1% of the elapsed
//! time, so absolute deadlines (EXPIREAT) stay close to real time without a step ever
//! ending a lease or lock early. A new term continues from the replica's last applied stamp; only
//! an empty machine (clock 0) adopts the wall clock.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use conclave_state::Millis;

/// The largest share of the elapsed time by which the stamps may drift toward the wall clock.
const SLEW_PER_MILLE: u64 = 10;
/// How often the clock offset file is read again.
const OFFSET_REREAD: Duration = Duration::from_millis(50);

/// This node's wall clock: the system clock plus an offset in milliseconds read from a file, so
/// tests can step or skew one node's clock while it runs (a missing or empty file is 0).
pub(crate) struct WallClock {
    offset_file: Option<PathBuf>,
    /// When the file was last read, and the offset it held.
    offset: Mutex<Option<(Instant, i64)>>,
}

impl WallClock {
    pub(crate) fn new(offset_file: Option<PathBuf>) -> Self {
        WallClock {
            offset_file,
            offset: Mutex::new(None),
        }
    }

    /// Milliseconds since the Unix epoch, offset.
    pub(crate) fn now_ms(&self) -> Millis {
        let system = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        (system + self.offset_ms()).max(0) as Millis
    }

    fn offset_ms(&self) -> i64 {
        let Some(path) = &self.offset_file else {
            return 0;
        };
        let mut cached = self.offset.lock().expect("lock poisoned");
        match *cached {
            Some((read_at, offset)) if read_at.elapsed() < OFFSET_REREAD => offset,
            _ => {
                let offset = std::fs::read_to_string(path)
                    .ok()
                    .and_then(|text| text.trim().parse::<i64>().ok())
                    .unwrap_or(0);
                *cached = Some((Instant::now(), offset));
                offset
            }
        }
    }
}

/// The leader's replicated time in one term (pure: instants and wall readings are passed in).
#[derive(Clone, Copy, Debug)]
pub(crate) struct TermTime {
    term: u64,
    /// The time at `at`, in microseconds since the epoch (sub-millisecond steps add up).
    micros: u64,
    at: Instant,
    /// Slew earned and not yet used, in thousandths of a microsecond: stamps taken less than
    /// 100 µs apart each earn less than a microsecond of slew, which must add up, not round
    /// away. Capped at [`MAX_SLEW_CREDIT`], so time that needed no slew never pays for a jump.
    slew_credit: u64,
}

/// At most 1 ms of unused slew is kept.
const MAX_SLEW_CREDIT: u64 = 1_000_000;

impl TermTime {
    /// Time in `term`, which starts at `floor` (the replica's clock) or, on an empty machine,
    /// at the wall clock.
    pub(crate) fn start(term: u64, floor: Millis, wall: Millis, at: Instant) -> Self {
        let start = if floor == 0 { wall } else { floor };
        TermTime {
            term,
            micros: start.saturating_mul(1000),
            at,
            slew_credit: 0,
        }
    }

    /// The stamp at `now`: the time advanced by the monotonic time since the last stamp, plus or
    /// minus at most [`SLEW_PER_MILLE`] of it toward `wall`, and never below `floor`. Monotone.
    pub(crate) fn advance(&mut self, now: Instant, wall: Millis, floor: Millis) -> Millis {
        let elapsed = now.saturating_duration_since(self.at).as_micros() as u64;
        if now > self.at {
            self.at = now;
        }
        let plain = self.micros.saturating_add(elapsed);
        self.slew_credit = self
            .slew_credit
            .saturating_add(elapsed.saturating_mul(SLEW_PER_MILLE))
            .min(MAX_SLEW_CREDIT);
        let bound = self.slew_credit / 1000;
        let wall = wall.saturating_mul(1000);
        let slew = wall.abs_diff(plain).min(bound);
        self.slew_credit -= slew * 1000;
        let slewed = if wall > plain {
            plain + slew
        } else {
            plain - slew
        };
        self.micros = slewed.max(floor.saturating_mul(1000)).max(self.micros);
        self.micros / 1000
    }
}

/// The stamps this node puts on entries while it leads.
pub(crate) struct LeaderTime {
    wall: WallClock,
    current: Mutex<Option<TermTime>>,
}

impl LeaderTime {
    pub(crate) fn new(wall: WallClock) -> Self {
        LeaderTime {
            wall,
            current: Mutex::new(None),
        }
    }

    /// Whether this node has stamped in `term` already.
    pub(crate) fn started(&self, term: u64) -> bool {
        let current = self.current.lock().expect("lock poisoned");
        current.is_some_and(|time| time.term == term)
    }

    /// The replicated time this node stamps now as leader of `term`, whose replica's clock is
    /// `floor`. The first stamp of a term must wait until the replica has applied every entry
    /// of the terms before (see `Node::leader_time`): the floor is where the term starts.
    pub(crate) fn stamp(&self, term: u64, floor: Millis) -> Millis {
        let now = Instant::now();
        let wall = self.wall.now_ms();
        let mut current = self.current.lock().expect("lock poisoned");
        let time = match current.as_mut() {
            Some(time) if time.term == term => time,
            _ => current.insert(TermTime::start(term, floor, wall, now)),
        };
        time.advance(now, wall, floor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WALL: Millis = 1_700_000_000_000;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_forward_wall_step_moves_stamps_by_at_most_a_hundredth_of_the_elapsed_time() {
        let t0 = Instant::now();
        let mut time = TermTime::start(1, 0, WALL, t0);
        assert_eq!(time.advance(t0, WALL, 0), WALL);
        // The wall clock jumps 60 s ahead; 2 s pass on the monotonic clock.
        let mut last = WALL;
        for step in 1..=20 {
            let stamp = time.advance(t0 + ms(100 * step), WALL + 60_000 + 100 * step, 0);
            assert!(stamp >= last);
            last = stamp;
        }
        assert!(last >= WALL + 2000, "{}", last - WALL);
        assert!(last <= WALL + 2000 + 20, "{}", last - WALL);
    }

    #[test]
    fn stamps_taken_microseconds_apart_still_slew_toward_the_wall_clock() {
        // Stamps every 50 µs each earn half a microsecond of slew: over a second they must still
        // add up to about 1% of it (10 ms), not round down to nothing.
        let t0 = Instant::now();
        let mut time = TermTime::start(1, 0, WALL, t0);
        let mut stamp = 0;
        for i in 1..=20_000u64 {
            let now = t0 + Duration::from_micros(50 * i);
            stamp = time.advance(now, WALL + 60_000, 0);
        }
        let slewed = stamp - (WALL + 1000);
        assert!(
            (9..=11).contains(&slewed),
            "slewed {slewed} ms in one second"
        );
    }

    #[test]
    fn a_backward_wall_step_does_not_freeze_stamps() {
        let t0 = Instant::now();
        let mut time = TermTime::start(1, 0, WALL, t0);
        time.advance(t0, WALL, 0);
        let stamp = time.advance(t0 + ms(2000), WALL - 60_000 + 2000, 0);
        assert!(stamp >= WALL + 2000 - 20, "{}", stamp as i64 - WALL as i64);
        assert!(stamp < WALL + 2000);
        let later = time.advance(t0 + ms(4000), WALL - 60_000 + 4000, 0);
        assert!(later >= stamp + 1980);
    }

    #[test]
    fn stamps_follow_a_skewed_wall_clock_only_by_slewing() {
        let t0 = Instant::now();
        // The wall clock is 1 s ahead of the replicated time from the start of the term.
        let mut time = TermTime::start(1, WALL, WALL + 1000, t0);
        assert_eq!(time.advance(t0, WALL + 1000, WALL), WALL);
        // Sub-millisecond steps still add up and still slew.
        let mut now = t0;
        for step in 1..=10_000 {
            now += Duration::from_micros(500);
            time.advance(now, WALL + 1000 + step / 2, WALL);
        }
        let stamp = time.advance(now, WALL + 6000, WALL);
        assert_eq!(stamp, WALL + 5000 + 50);
    }

    #[test]
    fn a_new_term_continues_from_the_floor_not_from_the_wall_clock() {
        let t0 = Instant::now();
        // The new leader's wall clock is a minute ahead of (or behind) the last committed stamp.
        for wall in [WALL + 60_000, WALL - 60_000] {
            let mut time = TermTime::start(2, WALL, wall, t0);
            assert_eq!(time.advance(t0, wall, WALL), WALL);
            let stamp = time.advance(t0 + ms(1000), wall + 1000, WALL);
            assert!((WALL + 990..=WALL + 1010).contains(&stamp), "{stamp}");
        }
        // Only an empty machine adopts the wall clock.
        let mut fresh = TermTime::start(1, 0, WALL, t0);
        assert_eq!(fresh.advance(t0, WALL, 0), WALL);
    }

    #[test]
    fn stamps_never_fall_below_the_floor_or_go_back() {
        let t0 = Instant::now();
        let mut time = TermTime::start(3, WALL, WALL, t0);
        // The replica applied a later stamp (an entry of the previous term applied late).
        assert_eq!(time.advance(t0 + ms(10), WALL, WALL + 500), WALL + 500);
        assert!(time.advance(t0 + ms(20), WALL - 100_000, WALL) >= WALL + 500);
        // An earlier instant (a racing caller) does not move time back.
        assert!(time.advance(t0, WALL, WALL) >= WALL + 500);
    }

    #[test]
    fn leader_time_restarts_from_the_floor_in_each_term() {
        let leader = LeaderTime::new(WallClock::new(None));
        let wall = WallClock::new(None).now_ms();
        let first = leader.stamp(1, 0);
        assert!(first.abs_diff(wall) < 1000);
        // A later term of this node starts from the replica's clock, a minute behind the wall.
        let floor = wall - 60_000;
        let second = leader.stamp(2, floor);
        assert!(
            second >= floor && second < floor + 1000,
            "{}",
            second - floor
        );
    }

    #[test]
    fn the_offset_file_shifts_the_wall_clock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("offset");
        let clock = WallClock::new(Some(path.clone()));
        let system = WallClock::new(None);
        assert!(clock.now_ms().abs_diff(system.now_ms()) < 100);
        std::fs::write(&path, "60000\n").unwrap();
        std::thread::sleep(OFFSET_REREAD + ms(10));
        let ahead = clock.now_ms() as i64 - system.now_ms() as i64;
        assert!((59_900..60_100).contains(&ahead), "{ahead}");
        std::fs::write(&path, "-60000").unwrap();
        std::thread::sleep(OFFSET_REREAD + ms(10));
        let behind = clock.now_ms() as i64 - system.now_ms() as i64;
        assert!((-60_100..-59_900).contains(&behind), "{behind}");
    }
}
