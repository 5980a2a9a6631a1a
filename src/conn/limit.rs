//! The open-file limit (`RLIMIT_NOFILE`): every socket is a file descriptor,
//! so it bounds how many connections the process can hold at all.
//!
//! The soft limit is often far below the hard one (1,024 against 20,000 or
//! more), and only the hard one is a real ceiling, so the server raises its
//! soft limit to the hard limit at start. The automatic connection limit is
//! 90% of the result: the remaining 10% are for the store, the log, the
//! config watcher, the metrics listener and a health probe, which must keep
//! working when the public port is full. Under a small limit 10% is too few
//! for that (the process holds about 20 descriptors before its first
//! connection), so at least [`MIN_RESERVE`] are always left.

/// The open-file limits of this process, after [`raise_nofile_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimit {
    /// The limit in force (what counts).
    pub soft: u64,
    pub hard: u64,
    /// The soft limit before it was raised, when it was.
    pub raised_from: Option<u64>,
}

/// Largest limit taken at face value; `RLIM_INFINITY` and huge values count
/// as this, so 90% of it is still a meaningful number.
const CEILING: u64 = 1 << 20;

/// Descriptors the automatic connection limit leaves free at the least
/// (matters below a limit of 640, where 10% would be fewer).
pub const MIN_RESERVE: u64 = 64;

/// Used when the limit cannot be read (not a Unix system).
const UNKNOWN_AUTO_MAX: usize = 10_000;

/// Raises the soft open-file limit to the hard limit (when it is lower and
/// the system allows it) and returns the limits in force.
#[cfg(unix)]
#[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every target
pub fn raise_nofile_limit() -> std::io::Result<NofileLimit> {
    let mut lim = get()?;
    let before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        let wanted = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        // SAFETY: `wanted` is a valid, initialized rlimit that outlives the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) } == 0 {
            lim = get()?;
        } else {
            // Some systems (macOS) refuse values above OPEN_MAX: keep the old one.
            tracing::debug!(error = %std::io::Error::last_os_error(), "cannot raise the open-file limit");
        }
    }
    Ok(NofileLimit {
        soft: lim.rlim_cur as u64,
        hard: lim.rlim_max as u64,
        raised_from: (lim.rlim_cur != before).then_some(before as u64),
    })
}

#[cfg(not(unix))]
pub fn raise_nofile_limit() -> std::io::Result<NofileLimit> {
    Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "no open-file limit on this system"))
}

/// The soft open-file limit in force, if it can be read.
#[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every target
pub fn nofile_soft_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        get().ok().map(|l| l.rlim_cur as u64)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

#[cfg(unix)]
fn get() -> std::io::Result<libc::rlimit> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(lim)
}

/// `server.max_http_connections = 0`: 90% of the soft open-file limit, and
/// at least [`MIN_RESERVE`] below it.
pub fn auto_max_connections(soft_limit: Option<u64>) -> usize {
    match soft_limit {
        Some(soft) => {
            let soft = soft.min(CEILING);
            (soft * 9 / 10).min(soft.saturating_sub(MIN_RESERVE)).max(1) as usize
        }
        None => UNKNOWN_AUTO_MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ninety_percent_of_the_limit() {
        assert_eq!(auto_max_connections(Some(20_000)), 18_000);
        assert_eq!(auto_max_connections(Some(1024)), 921);
        assert_eq!(auto_max_connections(Some(u64::MAX)), (CEILING * 9 / 10) as usize);
        assert_eq!(auto_max_connections(Some(0)), 1);
        // Small limits keep MIN_RESERVE free rather than 10%.
        assert_eq!(auto_max_connections(Some(640)), 576);
        assert_eq!(auto_max_connections(Some(256)), 192);
        assert_eq!(auto_max_connections(Some(64)), 1);
        assert_eq!(auto_max_connections(None), UNKNOWN_AUTO_MAX);
    }

    #[cfg(unix)]
    #[test]
    fn the_limit_can_be_read_and_raising_never_lowers_it() {
        let before = nofile_soft_limit().expect("readable");
        let after = raise_nofile_limit().expect("readable");
        assert!(after.soft >= before && after.soft <= after.hard, "{before} -> {after:?}");
    }
}
