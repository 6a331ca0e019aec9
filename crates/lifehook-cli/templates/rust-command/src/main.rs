//! {{name}}: a lifehook command plugin. It gets the step's `args` and the
//! variables of its `env` and `allow.env`; exit code 0 is success, anything
//! else a failure (which lifehook may retry).

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let who = std::env::var("WHO").unwrap_or_else(|_| "world".into());
    if args.iter().any(|a| a == "--fail") {
        eprintln!("asked to fail");
        std::process::exit(1);
    }
    println!("said hello to {who} with args {args:?}");
}
