//! How busy the machine was apart from this process, from Linux's `/proc`: a latency timing
//! says whether other processes competed for the CPU while it ran.

/// CPU time counters (clock ticks) of the whole machine and of this process at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuTimes {
    total: u64,
    busy: u64,
    own: u64,
}

impl CpuTimes {
    /// The counters now, or none where `/proc` does not give them (not Linux).
    pub fn now() -> Option<Self> {
        let machine = std::fs::read_to_string("/proc/stat").ok()?;
        let process = std::fs::read_to_string("/proc/self/stat").ok()?;
        Self::parse(&machine, &process)
    }

    fn parse(machine: &str, process: &str) -> Option<Self> {
        let fields: Vec<u64> = machine.lines().next()?.strip_prefix("cpu ")?.split_whitespace().map(|x| x.parse().ok()).collect::<Option<_>>()?;
        // user nice system idle iowait irq softirq steal (guest time is already in user).
        let total: u64 = fields.iter().take(8).sum();
        let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
        // The command name, in parentheses, may hold spaces: count fields after it. utime and
        // stime are fields 14 and 15 of proc(5), the 12th and 13th after the name.
        let after_name: Vec<&str> = process.rsplit_once(')')?.1.split_whitespace().collect();
        let own = after_name.get(11)?.parse::<u64>().ok()? + after_name.get(12)?.parse::<u64>().ok()?;
        Some(Self { total, busy: total.saturating_sub(idle), own })
    }

    /// The share (0..1) of the machine's CPU time between `self` and `later` that other
    /// processes used; none when too little time passed to tell.
    pub fn others_share(&self, later: &Self) -> Option<f64> {
        let total = later.total.checked_sub(self.total).filter(|&t| t > 0)?;
        let others = later.busy.saturating_sub(self.busy).saturating_sub(later.own.saturating_sub(self.own));
        Some((others as f64 / total as f64).clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::CpuTimes;

    fn stat(user: u64, idle: u64) -> String {
        format!("cpu  {user} 0 10 {idle} 5 0 0 0 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n")
    }

    fn own(utime: u64, stime: u64) -> String {
        format!("4242 (llmprune worker) S 1 4242 4242 0 -1 4194560 100 0 0 0 {utime} {stime} 0 0 20 0 3 0 100 1000 200")
    }

    #[test]
    fn others_share_is_the_busy_time_this_process_did_not_use() {
        let a = CpuTimes::parse(&stat(100, 1000), &own(40, 10)).unwrap();
        assert_eq!(a, CpuTimes { total: 1115, busy: 110, own: 50 });
        // 200 ticks pass: 150 busy, 120 of them ours, so others used 30 of 200.
        let b = CpuTimes::parse(&stat(250, 1050), &own(150, 20)).unwrap();
        assert_eq!(a.others_share(&b), Some(0.15));
        assert_eq!(a.others_share(&a), None);
        assert_eq!(CpuTimes::parse("intr 1 2 3", &own(1, 1)), None);
    }
}
