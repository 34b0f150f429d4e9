//! numa-cached: the org.opdbus.NumaCache system service.
fn main() {
    eprintln!("numa-cached: not built yet");
    std::process::exit(1);
}
