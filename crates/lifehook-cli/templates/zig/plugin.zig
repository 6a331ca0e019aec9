//! {{name}}: a lifehook plugin in Zig, a WASI preview-1 command.
//!
//! lifehook adapts the module into a component by itself and runs it as a
//! step: its arguments are the step's `args`, its environment the step's
//! `env`, it sees only the directories the step grants, and the exit code
//! is the step's result (0 is success). It goes through wasi-libc (`-lc`),
//! whose interface stays put while Zig's own I/O library is reworked.

extern "c" fn getenv(name: [*:0]const u8) ?[*:0]const u8;
extern "c" fn snprintf(buf: [*]u8, size: usize, format: [*:0]const u8, ...) c_int;
extern "c" fn fopen(path: [*:0]const u8, mode: [*:0]const u8) ?*anyopaque;
extern "c" fn fprintf(file: *anyopaque, format: [*:0]const u8, ...) c_int;
extern "c" fn fclose(file: *anyopaque) c_int;
extern "c" fn printf(format: [*:0]const u8, ...) c_int;
extern "c" fn perror(what: [*:0]const u8) void;

pub fn main() u8 {
    const dir = getenv("STATE_DIR") orelse "/state";
    const who = getenv("WHO") orelse "the cluster";
    var path: [4096:0]u8 = undefined;
    _ = snprintf(&path, path.len, "%s/{{name}}.txt", dir);
    const out = fopen(&path, "w") orelse {
        perror(&path);
        return 1;
    };
    _ = fprintf(out, "{{name}}: stopping, %s\n", who);
    if (fclose(out) != 0) {
        perror(&path);
        return 1;
    }
    _ = printf("{{name}} said hello to %s (wrote %s)\n", who, &path);
    return 0;
}
