//! lifehook's exit codes, the one place they are defined: the constants the
//! commands return, the table `--help` prints, and the rows the README's
//! table must have (a test compares them).

/// Exit code: every step succeeded, or failed with `on-failure = "continue"`.
pub const EXIT_OK: i32 = 0;
/// Exit code: a step with `on-failure = "abort"` failed; later steps skipped.
pub const EXIT_ABORTED: i32 = 1;
/// Exit code: the pipeline file or the command line is invalid.
pub const EXIT_INVALID: i32 = 2;
/// Exit code: the phase deadline was reached; steps were cut or skipped.
pub const EXIT_DEADLINE: i32 = 3;
/// Exit code: lifehook itself failed (could not start its engine, say).
pub const EXIT_INTERNAL: i32 = 4;
/// Exit code of `exec`: the application's command was found but cannot be
/// executed (as shells report it).
pub const EXIT_CANNOT_EXECUTE: i32 = 126;
/// Exit code of `exec`: the application's command was not found.
pub const EXIT_NOT_FOUND: i32 = 127;

/// The documented exit code of a phase's status.
pub fn exit_code(status: lifehook_runtime::PhaseStatus) -> i32 {
    use lifehook_runtime::PhaseStatus;
    match status {
        PhaseStatus::Ok => EXIT_OK,
        PhaseStatus::Aborted => EXIT_ABORTED,
        PhaseStatus::DeadlineReached => EXIT_DEADLINE,
    }
}

/// One documented exit code.
pub struct ExitCode {
    /// The code.
    pub code: i32,
    /// One line, for `--help`.
    pub short: &'static str,
    /// The README's row, in Markdown.
    #[cfg_attr(
        not(test),
        expect(
            dead_code,
            reason = "read by the test that keeps the README's table equal to this one"
        )
    )]
    pub long: &'static str,
}

/// The codes of `run`, `check`, `compile` and the other commands but
/// `exec` (which exits with the application's code; see its `--help`).
pub const CODES: &[ExitCode] = &[
    ExitCode {
        code: EXIT_OK,
        short: "every step succeeded, or failed with on-failure = \"continue\"",
        long: "every step succeeded, or failed with `on-failure = \"continue\"` (also: a repeated delivery of a phase that already completed)",
    },
    ExitCode {
        code: EXIT_ABORTED,
        short: "a step with on-failure = \"abort\" failed; the steps after it were skipped",
        long: "a step with `on-failure = \"abort\"` failed; the steps after it were skipped (but `always` steps)",
    },
    ExitCode {
        code: EXIT_INVALID,
        short: "the pipeline file or the command line is invalid (every problem is listed)",
        long: "the pipeline file, a manifest given to `check --pod`, or the command line is invalid (every problem is listed, with file, line and column)",
    },
    ExitCode {
        code: EXIT_DEADLINE,
        short: "the phase deadline was reached; running steps were stopped, the rest skipped",
        long: "the phase deadline was reached; running steps were stopped, the rest skipped (but `always` steps, which get their reserve)",
    },
    ExitCode {
        code: EXIT_INTERNAL,
        short: "lifehook itself failed (for example, its engine could not start)",
        long: "lifehook itself failed (for example, its engine could not start)",
    },
];

/// The `Exit codes:` section of `lifehook --help`.
pub fn help() -> String {
    let mut out = String::from("Exit codes:");
    for c in CODES {
        out += &format!("\n  {}  {}", c.code, c.short);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's `| code | meaning |` table, row by row.
    fn readme_rows() -> Vec<(i32, String)> {
        let readme = include_str!("../../../README.md");
        let table = readme
            .split("| code | meaning |\n| --- | --- |\n")
            .nth(1)
            .expect("the README has an exit-code table");
        table
            .lines()
            .take_while(|l| l.starts_with('|'))
            .map(|l| {
                let cells: Vec<&str> = l.trim_matches('|').split(" | ").collect();
                let code = cells[0].trim().parse().expect("a code");
                (code, cells[1].trim().to_owned())
            })
            .collect()
    }

    #[test]
    fn the_readmes_exit_code_table_is_this_one() {
        let ours: Vec<(i32, String)> = CODES.iter().map(|c| (c.code, c.long.to_owned())).collect();
        assert_eq!(readme_rows(), ours);
    }

    #[test]
    fn help_lists_every_code() {
        let help = help();
        for c in CODES {
            assert!(
                help.contains(&format!("  {}  {}", c.code, c.short)),
                "{help}"
            );
        }
    }
}
