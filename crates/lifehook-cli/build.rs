//! Records the target triple, which `lifehook --version` prints (a user
//! holding a downloaded binary can tell which one it is).

fn main() {
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=LIFEHOOK_TARGET={target}");
    println!("cargo:rerun-if-changed=build.rs");
}
