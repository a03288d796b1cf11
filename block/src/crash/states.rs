//! Crash states: what a disk may hold after a power cut at any point of a
//! [`WriteLog`], under the virtio-blk contract (docs/crash-model.md).
//!
//! At a cut after the first `k` events:
//! - a write that completed while the guest saw no write cache (WCE=0) is
//!   durable;
//! - a FLUSH that completed makes durable every write that completed
//!   before the FLUSH was submitted;
//! - every other write submitted before the cut (completed with a write
//!   cache on, or still in flight) may be on the disk or not;
//! - writes submitted after the cut are not.
//!
//! A state is the base image with the kept writes applied in the order the
//! disk completed them (writes in flight at the cut last, in submission
//! order), so overlapping writes show every version a real disk could.

use std::collections::{BTreeSet, HashMap};

use super::log::{Event, LogError, WriteLog};

/// The writes at one cut point, by their fate.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cut {
    /// Events that happened before the cut.
    pub at: usize,
    /// Every write submitted before the cut, in apply order.
    pub order: Vec<u64>,
    /// Writes that must be on the disk, in apply order.
    pub durable: Vec<u64>,
    /// Writes that may or may not be, in apply order.
    pub optional: Vec<u64>,
    /// The optional writes still in flight at the cut (the last of
    /// `optional`): the ones a power cut may tear.
    pub in_flight: Vec<u64>,
}

/// Sorts `cut`'s writes into durable and optional.
pub fn analyse(log: &WriteLog, at: usize) -> Result<Cut, LogError> {
    log.validate()?;
    let events = &log.events[..at.min(log.events.len())];
    let mut wce = log.initial_write_cache;
    // Writes in completion order: (id, index of completion, durable then).
    let mut completed: Vec<(u64, usize, bool)> = Vec::new();
    let mut in_flight: Vec<u64> = Vec::new();
    let mut flush_submitted_at: HashMap<u64, usize> = HashMap::new();
    // The latest submission index among completed flushes.
    let mut covered_before: Option<usize> = None;
    for (i, e) in events.iter().enumerate() {
        match *e {
            Event::WriteCache { enabled } => wce = enabled,
            Event::WriteSubmitted { id, .. } => in_flight.push(id),
            Event::WriteCompleted { id } => {
                in_flight.retain(|&w| w != id);
                completed.push((id, i, !wce));
            }
            Event::FlushSubmitted { id } => {
                flush_submitted_at.insert(id, i);
            }
            Event::FlushCompleted { id } => {
                let s = flush_submitted_at[&id];
                covered_before = covered_before.max(Some(s));
            }
        }
    }
    let mut cut = Cut {
        at: events.len(),
        ..Cut::default()
    };
    for (id, done_at, durable_at_completion) in completed {
        let flushed = covered_before.is_some_and(|s| done_at < s);
        if durable_at_completion || flushed {
            cut.durable.push(id);
        } else {
            cut.optional.push(id);
        }
        cut.order.push(id);
    }
    cut.optional.extend(&in_flight);
    cut.order.extend(&in_flight);
    cut.in_flight = in_flight;
    Ok(cut)
}

/// One crash state to check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrashState {
    /// The cut: events that happened before the power went.
    pub cut: usize,
    /// Writes on the disk, in apply order.
    pub kept: Vec<u64>,
    /// Writes submitted before the cut that are not on the disk.
    pub dropped: Vec<u64>,
    /// Kept writes that reached the disk only in part (with tearing).
    pub torn: Vec<Torn>,
}

/// A write a power cut tore: which of its 512-byte sectors, in order,
/// reached the disk (some but not all).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Torn {
    /// The write's id.
    pub id: u64,
    /// One flag per sector of the write.
    pub sectors: Vec<bool>,
}

impl CrashState {
    /// The state of `cut` that keeps the optional writes `keep` says yes
    /// to (by their index in `cut.optional`).
    fn from_choice(cut: &Cut, keep: impl Fn(usize) -> bool) -> CrashState {
        let chosen: BTreeSet<u64> = cut
            .optional
            .iter()
            .enumerate()
            .filter(|&(i, _)| keep(i))
            .map(|(_, &id)| id)
            .collect();
        let (kept, dropped) = cut
            .order
            .iter()
            .partition(|id| cut.durable.contains(id) || chosen.contains(id));
        CrashState {
            cut: cut.at,
            kept,
            dropped,
            torn: Vec::new(),
        }
    }
}

/// 512 bytes: what a disk writes atomically at best.
const SECTOR: u64 = 512;

/// Tears each kept in-flight write of more than one sector with even
/// odds: a random subset of its sectors, neither empty nor full.
fn tear_some(cut: &Cut, kept: &[u64], sectors: &HashMap<u64, u64>, rng: &mut Rng) -> Vec<Torn> {
    let mut torn = Vec::new();
    for &id in cut.in_flight.iter().filter(|id| kept.contains(id)) {
        let n = sectors.get(&id).copied().unwrap_or(0) as usize;
        if n < 2 || rng.next() & 1 == 0 {
            continue;
        }
        let mut flags: Vec<bool> = (0..n).map(|_| rng.next() & 1 == 1).collect();
        // Neither none nor all: those are the dropped and the kept write.
        let pick = (rng.next() % n as u64) as usize;
        if flags.iter().all(|&f| f) {
            flags[pick] = false;
        } else if !flags.iter().any(|&f| f) {
            flags[pick] = true;
        }
        torn.push(Torn { id, sectors: flags });
    }
    torn
}

/// A small deterministic generator (splitmix64): states reproduce from
/// the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Up to `max` distinct crash states of `log`: first the least the disk
/// may hold right after each completed FLUSH and at the end of the log
/// (the persistence points, where a missing flush shows first; evenly
/// spread if there are more than `max`), then random cuts
/// with random subsets of their optional writes, reproducible from `seed`.
pub fn generate(log: &WriteLog, max: usize, seed: u64) -> Result<Vec<CrashState>, LogError> {
    explore(log, max, seed, false)
}

/// Like [`generate`], and each random state also tears, with even odds,
/// every kept write that was in flight at its cut and spans more than one
/// 512-byte sector: a random subset of its sectors (not none, not all)
/// reaches the disk, as when power fails while a disk writes it.
pub fn generate_torn(log: &WriteLog, max: usize, seed: u64) -> Result<Vec<CrashState>, LogError> {
    explore(log, max, seed, true)
}

/// A state's identity, for keeping each state once.
type Key = (Vec<u64>, Vec<Torn>);

fn explore(log: &WriteLog, max: usize, seed: u64, tear: bool) -> Result<Vec<CrashState>, LogError> {
    log.validate()?;
    let sectors: HashMap<u64, u64> = log
        .events
        .iter()
        .filter_map(|e| match *e {
            Event::WriteSubmitted { id, len, .. } => Some((id, len.div_ceil(SECTOR))),
            _ => None,
        })
        .collect();
    let mut seen: BTreeSet<Key> = BTreeSet::new();
    let mut states = Vec::new();
    let mut push = |s: CrashState, states: &mut Vec<CrashState>| {
        if states.len() < max && seen.insert((s.kept.clone(), s.torn.clone())) {
            states.push(s);
        }
    };
    let mut points: Vec<usize> = log
        .events
        .iter()
        .enumerate()
        .filter(|(_, e)| matches!(e, Event::FlushCompleted { .. }))
        .map(|(i, _)| i + 1)
        .collect();
    points.push(log.events.len());
    let step = points.len().div_ceil(max.max(1));
    for &at in points.iter().step_by(step.max(1)) {
        push(
            CrashState::from_choice(&analyse(log, at)?, |_| false),
            &mut states,
        );
    }
    let mut rng = Rng(seed);
    let attempts = max.saturating_mul(20);
    for _ in 0..attempts {
        if states.len() >= max {
            break;
        }
        let at = (rng.next() % (log.events.len() as u64 + 1)) as usize;
        let cut = analyse(log, at)?;
        let bits: Vec<bool> = cut.optional.iter().map(|_| rng.next() & 1 == 1).collect();
        let mut state = CrashState::from_choice(&cut, |i| bits[i]);
        if tear {
            state.torn = tear_some(&cut, &state.kept, &sectors, &mut rng);
        }
        push(state, &mut states);
    }
    Ok(states)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Event::*;

    fn w(id: u64) -> Event {
        WriteSubmitted {
            id,
            offset: id * 4096,
            len: 4096,
        }
    }
    fn done(id: u64) -> Event {
        WriteCompleted { id }
    }

    #[test]
    fn with_no_write_cache_every_completed_write_is_in_every_later_state() {
        let log = WriteLog {
            initial_write_cache: false,
            events: vec![w(1), done(1), w(2), w(3), done(3), done(2), w(4)],
        };
        let cut = analyse(&log, log.events.len()).unwrap();
        assert_eq!(cut.durable, [1, 3, 2]);
        assert_eq!(cut.optional, [4]);
        // Before write 3 completed it is only optional.
        let cut = analyse(&log, 4).unwrap();
        assert_eq!((cut.durable, cut.optional), (vec![1], vec![2, 3]));
        for s in generate(&log, 50, 7).unwrap() {
            let must = analyse(&log, s.cut).unwrap().durable;
            assert!(must.iter().all(|id| s.kept.contains(id)), "{s:?}");
        }
    }

    #[test]
    fn a_flush_covers_the_writes_completed_before_it_was_submitted() {
        let log = WriteLog {
            initial_write_cache: true,
            events: vec![
                w(1),
                done(1),
                FlushSubmitted { id: 1 },
                w(2),
                done(2), // completed after the flush was submitted
                FlushCompleted { id: 1 },
                w(3),
                done(3),
                FlushSubmitted { id: 2 }, // still in flight at the end
            ],
        };
        // Before the flush completed nothing is durable.
        assert!(analyse(&log, 5).unwrap().durable.is_empty());
        let cut = analyse(&log, 6).unwrap();
        assert_eq!((cut.durable, cut.optional), (vec![1], vec![2]));
        let cut = analyse(&log, log.events.len()).unwrap();
        assert_eq!((cut.durable, cut.optional), (vec![1], vec![2, 3]));
    }

    #[test]
    fn the_write_cache_setting_at_completion_decides() {
        let log = WriteLog {
            initial_write_cache: true,
            events: vec![
                w(1),
                done(1),
                WriteCache { enabled: false },
                w(2),
                done(2),
                WriteCache { enabled: true },
                w(3),
                done(3),
            ],
        };
        let cut = analyse(&log, log.events.len()).unwrap();
        assert_eq!((cut.durable, cut.optional), (vec![2], vec![1, 3]));
    }

    #[test]
    fn generated_states_respect_durability_and_reproduce_from_the_seed() {
        let mut events = Vec::new();
        for id in 0..12 {
            events.extend([w(id), done(id)]);
            if id % 4 == 3 {
                events.extend([FlushSubmitted { id }, FlushCompleted { id }]);
            }
        }
        let log = WriteLog {
            initial_write_cache: true,
            events,
        };
        let states = generate(&log, 40, 1).unwrap();
        assert_eq!(states, generate(&log, 40, 1).unwrap());
        assert_ne!(states, generate(&log, 40, 2).unwrap());
        assert!(states.len() <= 40 && states.len() > 10);
        // The least state at each of the 3 flush points, and at the end.
        let least: Vec<&CrashState> = states
            .iter()
            .filter(|s| s.dropped.len() == analyse(&log, s.cut).unwrap().optional.len())
            .collect();
        assert!(least.len() >= 4, "{states:?}");
        let mut kept_sets = BTreeSet::new();
        for s in &states {
            let cut = analyse(&log, s.cut).unwrap();
            // Never drops a durable write, keeps nothing unsubmitted.
            assert!(cut.durable.iter().all(|id| s.kept.contains(id)), "{s:?}");
            assert!(s.dropped.iter().all(|id| cut.optional.contains(id)));
            assert_eq!(
                s.kept.len() + s.dropped.len(),
                cut.durable.len() + cut.optional.len()
            );
            assert!(kept_sets.insert(s.kept.clone()), "duplicate state {s:?}");
        }
    }

    #[test]
    fn kept_writes_apply_in_completion_order_whatever_their_fate() {
        // 2 completes first with the cache on (optional), then the guest
        // turns the cache off and 1 completes (durable): a state that keeps
        // both must apply 2 before 1.
        let log = WriteLog {
            initial_write_cache: true,
            events: vec![
                w(1),
                w(2),
                done(2),
                WriteCache { enabled: false },
                done(1),
                w(3),
            ],
        };
        let cut = analyse(&log, log.events.len()).unwrap();
        assert_eq!(cut.order, [2, 1, 3]);
        let all = CrashState::from_choice(&cut, |_| true);
        assert_eq!((all.kept, all.dropped), (vec![2, 1, 3], vec![]));
        let least = CrashState::from_choice(&cut, |_| false);
        assert_eq!((least.kept, least.dropped), (vec![1], vec![2, 3]));
    }

    #[test]
    fn only_kept_writes_in_flight_at_the_cut_tear_and_never_whole() {
        let big = |id| WriteSubmitted {
            id,
            offset: id * 65536,
            len: 8 * 512,
        };
        let log = WriteLog {
            initial_write_cache: true,
            events: vec![
                big(1),
                done(1),
                FlushSubmitted { id: 1 },
                FlushCompleted { id: 1 },
                big(2),
                big(3),
                w(4), // 8 sectors too (4096 bytes)
                done(3),
            ],
        };
        assert!(generate(&log, 40, 5)
            .unwrap()
            .iter()
            .all(|s| s.torn.is_empty()));
        let states = generate_torn(&log, 40, 5).unwrap();
        assert_eq!(states, generate_torn(&log, 40, 5).unwrap());
        let mut tore = 0;
        for s in &states {
            let cut = analyse(&log, s.cut).unwrap();
            for t in &s.torn {
                tore += 1;
                assert!(
                    cut.in_flight.contains(&t.id) && s.kept.contains(&t.id),
                    "{s:?}"
                );
                assert_eq!(t.sectors.len(), 8);
                assert!(t.sectors.iter().any(|&x| x) && !t.sectors.iter().all(|&x| x));
            }
            // Writes 1 and 3 tear only before they completed.
            assert!(s.cut < 2 || s.torn.iter().all(|t| t.id != 1), "{s:?}");
            assert!(s.cut < 8 || s.torn.iter().all(|t| t.id != 3), "{s:?}");
        }
        assert!(tore > 0, "{states:?}");
    }

    #[test]
    fn impossible_logs_are_refused() {
        let log = WriteLog {
            initial_write_cache: true,
            events: vec![done(1)],
        };
        assert!(matches!(
            generate(&log, 4, 0),
            Err(LogError::NotInFlight { index: 0, .. })
        ));
        let log = WriteLog {
            initial_write_cache: true,
            events: vec![w(1), w(1)],
        };
        assert!(matches!(analyse(&log, 2), Err(LogError::Duplicate { .. })));
    }
}
