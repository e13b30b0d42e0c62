//! The `locksmith` command (see the README; its subcommands land with issue 5).

fn main() {
    eprintln!("locksmith: the command-line tool is not built yet");
    std::process::exit(2);
}
