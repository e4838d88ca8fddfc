//! `twill-dnsd`: twill's node-local cluster DNS server.

fn main() {
    eprintln!("twill-dnsd: not ready yet");
    std::process::exit(1);
}
