//! A mutation fuzzer for the pipeline parser, run as a normal test with a
//! bounded number of cases (`LIFEHOOK_FUZZ_CASES` for more). Inputs are real
//! pipelines (this crate's `fuzz/corpus`, the examples, the end-to-end error
//! corpus) mutated by a seeded generator: bytes flipped, lines dropped,
//! doubled or swapped, pipeline snippets and nasty values spliced in. For
//! every input: no panic, every rejection located (line and column inside
//! the file, a message), no parse longer than a second. Inputs that once
//! failed live in `fuzz/regressions` and run first, every time.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Pieces spliced into inputs: keys, values and shapes the schema knows,
/// and values meant to break things.
const SNIPPETS: &[&str] = &[
    "[[pre-stop.steps]]\n",
    "[[post-start.steps]]\n",
    "[pre-stop]\n",
    "[defaults]\n",
    "[state]\n",
    "name = \"a\"\n",
    "name = \"\"\n",
    "plugin = \"p.wasm\"\n",
    "plugin = \"${UNSET}\"\n",
    "sleep = \"5s\"\n",
    "sleep = \"0s\"\n",
    "needs = [\"a\"]\n",
    "needs = [\"a\", \"a\", \"zz\"]\n",
    "needs = []\n",
    "always = true\n",
    "concurrent = true\n",
    "tags = [\"x\", \"\"]\n",
    "timeout = \"999999999999s\"\n",
    "timeout = 5\n",
    "deadline = \"1ns\"\n",
    "grace-period = \"1s\"\n",
    "reserve = \"100000h\"\n",
    "fuel = -1\n",
    "fuel = 9223372036854775807\n",
    "memory = \"99999999999999GiB\"\n",
    "max-open = 4294967296\n",
    "max-write = \"0B\"\n",
    "max-concurrency = 0\n",
    "retries = { attempts = 100, backoff = \"1ms\", multiplier = 100.0 }\n",
    "retries = { multiplier = nan }\n",
    "retries = { multiplier = inf }\n",
    "allow.http = [\"http://[::1\"]\n",
    "allow.tcp = [\"a:0\", \"*.x:1\"]\n",
    "allow.http = [{ origin = \"https://a\", ca = \"${X}\", cert = \"\" }]\n",
    "allow.tcp = [{ address = \"a:1\", tls = \"yes\", key = \"k\" }]\n",
    "allow.tcp = [{ tls = true }]\n",
    "allow.dirs = [{ host = \"..\", guest = \"rel\" }]\n",
    "config = { a = [[1]], b = { c = { d = [\"\\n\"] } } }\n",
    "config.x = 1979-05-27\n",
    "\"\\u0000\" = 1\n",
    "a = \"${\"\n",
    "a = \"$${X}\"\n",
    "é = \"ü\"\n",
    "= \n",
    "[[\n",
    "]]\n",
    "\"\"\"",
    "'''",
    "#",
    "\r\n",
    "\t",
];

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(input: &str, rng: &mut Rng) -> String {
    let mut text = input.to_owned();
    for _ in 0..=rng.below(3) {
        let lines: Vec<&str> = text.split_inclusive('\n').collect();
        text = match rng.below(8) {
            0 if !text.is_empty() => {
                // One byte replaced by a structural or random character.
                let mut bytes = text.into_bytes();
                let at = rng.below(bytes.len());
                let pool = b"\"'[]{}=.,#\n\\$ 0az-_:";
                bytes[at] = pool[rng.below(pool.len())];
                String::from_utf8_lossy(&bytes).into_owned()
            }
            1 if !lines.is_empty() => {
                let at = rng.below(lines.len());
                lines
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != at)
                    .map(|(_, l)| *l)
                    .collect()
            }
            2 if !lines.is_empty() => {
                let at = rng.below(lines.len());
                let mut out: Vec<&str> = lines.clone();
                out.insert(at, lines[at]);
                out.concat()
            }
            3 if lines.len() > 1 => {
                let (a, b) = (rng.below(lines.len()), rng.below(lines.len()));
                let mut out = lines.clone();
                out.swap(a, b);
                out.concat()
            }
            4 => {
                let at = rng.below(lines.len() + 1);
                let mut out: Vec<&str> = lines.clone();
                out.insert(at.min(out.len()), SNIPPETS[rng.below(SNIPPETS.len())]);
                out.concat()
            }
            5 if !text.is_empty() => {
                // Cut at a character boundary.
                let at = rng.below(text.len());
                let at = (0..=at)
                    .rev()
                    .find(|i| text.is_char_boundary(*i))
                    .unwrap_or(0);
                text[..at].to_owned()
            }
            6 => {
                // A value repeated until it is large or deep.
                let pieces = ["[", "{a=", "\"x", "a.", "[[t]]\n"];
                let piece = pieces[rng.below(pieces.len())];
                format!("{text}k = {}\n", piece.repeat(1 + rng.below(2000)))
            }
            _ => format!("{text}{}", SNIPPETS[rng.below(SNIPPETS.len())]),
        };
    }
    text
}

fn seeds() -> Vec<(PathBuf, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in [
        root.join("fuzz/corpus"),
        root.join("../../examples"),
        root.join("../../tests/e2e/corpus"),
    ] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let candidates = if path.is_dir() {
                vec![path.join("lifehook.toml")]
            } else {
                vec![path]
            };
            for file in candidates {
                if file.extension().is_some_and(|e| e == "toml")
                    && let Ok(text) = std::fs::read_to_string(&file)
                {
                    files.push((file, text));
                }
            }
        }
    }
    files.sort();
    files
}

/// Parses one input and checks every property: whether it was accepted,
/// or the property it breaks.
fn check(input: &str, dir: &Path) -> Result<bool, String> {
    let path = dir.join("lifehook.toml");
    let started = Instant::now();
    let outcome = std::panic::catch_unwind(|| {
        let env = |name: &str| (name == "POD_NAME").then(|| "web-0".to_owned());
        match crate::parse(input, &path, &env, None) {
            Ok(pipeline) => {
                for phase in &pipeline.phases {
                    let _ = crate::budget::timeline(phase);
                    let _ = crate::budget::cleanup_reserve(phase, |_| true);
                }
                Ok(None)
            }
            Err(diagnostics) => Ok(Some((diagnostics.to_string(), diagnostics))),
        }
    });
    let took = started.elapsed();
    if took > Duration::from_secs(1) {
        return Err(format!("parsing took {took:?}"));
    }
    let diagnostics = match outcome {
        Err(_) => return Err("the parser panicked".into()),
        Ok(Err::<_, String>(e)) => return Err(e),
        Ok(Ok(None)) => return Ok(true),
        Ok(Ok(Some((_, d)))) => d,
    };
    let lines = input.split('\n').count();
    if diagnostics.0.is_empty() {
        return Err("rejected without a diagnostic".into());
    }
    for d in &diagnostics.0 {
        if d.line == 0 || d.line > lines || d.column == 0 || d.message.is_empty() {
            return Err(format!(
                "badly located diagnostic {}:{}: {:?}",
                d.line, d.column, d.message
            ));
        }
        if d.path != path {
            return Err(format!(
                "diagnostic names {} instead of the file",
                d.path.display()
            ));
        }
    }
    Ok(false)
}

/// Inputs at the edges: deep nesting, huge values, thousands of steps in a
/// long `needs` chain (the graph checks must stay linear-ish).
#[test]
fn extreme_inputs_are_handled_within_a_second() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("p.wasm"), b"").expect("plugin");
    let mut chain = String::new();
    for i in 0..5_000 {
        chain += &format!("[[pre-stop.steps]]\nname = \"s{i}\"\nplugin = \"p.wasm\"\n");
        if i > 0 {
            chain += &format!("needs = [\"s{}\"]\n", i - 1);
        }
    }
    let mut cycle = chain.clone();
    cycle = cycle.replacen(
        "plugin = \"p.wasm\"\n",
        "plugin = \"p.wasm\"\nneeds = [\"s4999\"]\n",
        1,
    );
    let inputs = [
        format!("a = {}", "[".repeat(200_000)),
        format!("a = {}", "{b = ".repeat(200_000)),
        format!("{}= 1", "a.".repeat(100_000)),
        format!("[pre-stop]\ndeadline = \"{}s\"", "9".repeat(10_000)),
        format!("x = \"{}\"", "\\u0041".repeat(500_000)),
        chain,
        cycle,
    ];
    for input in &inputs {
        if let Err(why) = check(input, dir.path()) {
            panic!(
                "{why} on an input starting {:?}",
                &input[..input.len().min(60)]
            );
        }
    }
}

#[test]
fn mutated_pipelines_never_panic_and_every_rejection_is_located() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("p.wasm"), b"").expect("plugin");
    let regressions = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    for entry in std::fs::read_dir(&regressions)
        .expect("regressions")
        .flatten()
    {
        if entry.path().extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        if let Err(why) = check(&text, dir.path()) {
            panic!("regression {} fails again: {why}", entry.path().display());
        }
    }
    let seeds = seeds();
    assert!(
        seeds.len() >= 20,
        "the fuzz corpus went missing: {}",
        seeds.len()
    );
    let cases: usize = std::env::var("LIFEHOOK_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let mut rng = Rng(0x00f0_0d5e_ed00_0001);
    let (mut accepted, mut rejected) = (0, 0);
    for case in 0..cases {
        let (seed_path, seed) = &seeds[rng.below(seeds.len())];
        let input = mutate(seed, &mut rng);
        match check(&input, dir.path()) {
            Ok(true) => accepted += 1,
            Ok(false) => rejected += 1,
            Err(why) => {
                let saved = regressions.join(format!("case-{case}.toml"));
                let _ = std::fs::write(&saved, &input);
                panic!(
                    "case {case} (from {}) {why}; the input is saved as {} for a regression test",
                    seed_path.display(),
                    saved.display()
                );
            }
        }
    }
    println!(
        "fuzzed {cases} mutated pipelines: {accepted} accepted, {rejected} rejected with located errors"
    );
}
