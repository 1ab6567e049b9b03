//! How many connections the server may hold open: fewer than its file-descriptor limit
//! allows, so that a flood of clients gets `503 Service Unavailable` instead of a server
//! that cannot open a file or accept a connection.
//!
//! Each connection holds one descriptor. At start the soft `RLIMIT_NOFILE` is raised to the
//! hard one (as servers commonly do). Of the descriptors not yet in use then, a quarter (at
//! least [`MIN_RESERVE`]) stays in reserve: for what the model, the runtime and the logs
//! open later, and for the connections being refused (each holds its descriptor while it
//! reads the request it refuses, at most half of the reserve at once); the rest may be
//! connections.

/// The fewest descriptors kept out of the connections' share.
pub const MIN_RESERVE: u64 = 8;

/// What the descriptor limit leaves for connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// The process's descriptor limit (after raising the soft limit to the hard one).
    pub limit: u64,
    /// The most connections served at once.
    pub connections: usize,
    /// Whether `connections` is less than was asked for (the limit allows no more).
    pub lowered: bool,
    /// The most refused connections read at once (the others are closed right after
    /// their 503 is written).
    pub refusals: usize,
}

impl Budget {
    /// The budget of this process, at most `wanted` connections when given.
    pub fn of_this_process(wanted: Option<usize>) -> Budget {
        raise_descriptor_limit();
        Budget::compute(descriptor_limit(), descriptors_in_use(), wanted)
    }

    /// The budget with `limit` descriptors of which `in_use` are taken.
    pub fn compute(limit: u64, in_use: u64, wanted: Option<usize>) -> Budget {
        let free = limit.saturating_sub(in_use);
        let reserve = (free / 4).max(MIN_RESERVE);
        let allowed = usize::try_from(free.saturating_sub(reserve).max(1)).unwrap_or(usize::MAX);
        let connections = wanted.map_or(allowed, |w| w.clamp(1, allowed));
        Budget {
            limit,
            connections,
            lowered: wanted.is_some_and(|w| w > allowed),
            refusals: usize::try_from(reserve / 2).unwrap_or(usize::MAX),
        }
    }
}

/// Raises the soft limit on open descriptors to the hard limit.
fn raise_descriptor_limit() {
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// The soft limit on open descriptors (no limit counts as 2^20, about what the kernel
/// allows a process by default).
fn descriptor_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct passed.
    let read = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    if !read || limit.rlim_cur == libc::RLIM_INFINITY {
        return 1 << 20;
    }
    limit.rlim_cur
}

/// The descriptors open now (Linux: the entries of `/proc/self/fd`, less the one listing
/// it); where that cannot be read, the three standard streams.
fn descriptors_in_use() -> u64 {
    fs_err::read_dir("/proc/self/fd")
        .map(|entries| (entries.count() as u64).saturating_sub(1))
        .unwrap_or(3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quarter_of_the_free_descriptors_stays_in_reserve() {
        let budget = Budget::compute(1024, 24, None);
        assert_eq!(budget.connections, 750);
        assert_eq!(budget.refusals, 125);
        assert!(!budget.lowered);
    }

    #[test]
    fn a_small_limit_keeps_the_minimum_reserve_and_at_least_one_connection() {
        assert_eq!(Budget::compute(64, 44, None).connections, 12);
        assert_eq!(Budget::compute(64, 54, None).connections, 2);
        assert_eq!(Budget::compute(64, 60, None).connections, 1);
        assert_eq!(Budget::compute(64, 80, None).connections, 1);
        assert_eq!(Budget::compute(64, 60, None).refusals, 4);
    }

    #[test]
    fn a_wanted_count_is_kept_when_the_limit_allows_it_and_lowered_when_not() {
        let kept = Budget::compute(1024, 24, Some(100));
        assert_eq!((kept.connections, kept.lowered), (100, false));
        let lowered = Budget::compute(1024, 24, Some(5000));
        assert_eq!((lowered.connections, lowered.lowered), (750, true));
    }

    #[test]
    fn the_descriptors_of_this_process_are_counted() {
        let before = descriptors_in_use();
        let held = fs_err::File::open("/proc/self/status").unwrap();
        assert_eq!(descriptors_in_use(), before + 1);
        drop(held);
    }
}
