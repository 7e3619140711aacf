//! `edumind-dataplane`: the tenant-isolated HTTP API. The service itself arrives with the
//! data-plane issue; until then the binary says so instead of pretending to serve.

fn main() -> std::process::ExitCode {
    eprintln!(
        "edumind-dataplane {}: the HTTP service is not built yet (schema version {})",
        env!("CARGO_PKG_VERSION"),
        edumind_schema::latest_version()
    );
    std::process::ExitCode::from(2)
}
