//! `cargo xtask bench`: whole-process benchmarks with hyperfine.

pub fn run(_args: &[String]) -> anyhow::Result<u8> {
    anyhow::bail!("not written yet")
}
