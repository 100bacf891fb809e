//! Log lines for admins who tail them: one line per event, UTC RFC 3339
//! timestamps, level, target stage, key=value fields; JSON for shippers; no
//! ANSI colours unless stderr is a terminal.

use crate::config::LogFormat;
use std::io::IsTerminal;
use tracing_subscriber::fmt::time::UtcTime;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `RUST_LOG` overrides the default `info`
/// (`warn` for the notify crate).
pub fn init(format: LogFormat) {
    // notify logs at info when a removed folder's watch is already gone
    // (every emptied drop folder): not an event an admin needs.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,notify=warn"));
    let timer = UtcTime::rfc_3339();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_timer(timer)
        .with_writer(std::io::stderr)
        .with_target(true);
    let result = match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
    };
    // A second init (tests, reload) keeps the first subscriber.
    let _ = result;
}
