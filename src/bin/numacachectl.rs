//! numacachectl: the command-line client of numa-cached.
fn main() {
    eprintln!("numacachectl: not built yet");
    std::process::exit(1);
}
