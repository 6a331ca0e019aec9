//! The memory limit of an attempt: the total of every linear memory a
//! component grows, where wasmtime's own limit applies to each memory
//! separately (a component has several).

use wasmtime::ResourceLimiter;

/// Caps the total linear memory of an attempt (wasmtime's own limits apply
/// per memory; a component has several).
pub(crate) struct MemoryLimiter {
    limit: u64,
    used: u64,
    /// The total the plugin asked for when it went over the limit.
    pub(crate) exceeded: Option<u64>,
}

impl MemoryLimiter {
    pub(crate) fn new(limit: u64) -> MemoryLimiter {
        MemoryLimiter {
            limit,
            used: 0,
            exceeded: None,
        }
    }

    /// The limit, in bytes.
    pub(crate) fn limit(&self) -> u64 {
        self.limit
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // `used` is the sum over memories; this one's old size is replaced
        // by its new one. Refusing (Ok(false)) makes `memory.grow` return
        // -1 in the guest, which its allocator reports as out of memory;
        // `exceeded` lets the report say so instead of the plugin's words.
        let total = self.used.saturating_sub(current as u64) + desired as u64;
        if total > self.limit {
            self.exceeded = Some(total);
            return Ok(false);
        }
        self.used = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references; a million is far beyond any real
        // plugin and bounds what a hostile one can allocate.
        Ok(desired <= 1_000_000)
    }

    // Counts of instances, tables and memories: far above what a component
    // toolchain emits (a Python component has a few dozen), low enough that
    // a hostile component cannot make the store allocate without end.
    fn instances(&self) -> usize {
        1_000
    }

    fn tables(&self) -> usize {
        1_000
    }

    fn memories(&self) -> usize {
        1_000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_counts_all_memories_together() {
        let mut l = MemoryLimiter::new(100);
        assert!(l.memory_growing(0, 60, None).expect("no error"));
        assert!(l.memory_growing(0, 30, None).expect("no error"));
        assert!(!l.memory_growing(30, 50, None).expect("no error"));
        assert_eq!(l.exceeded, Some(110));
        assert!(l.memory_growing(30, 40, None).expect("no error"));
    }
}
